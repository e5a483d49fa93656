"""What sampling needs without torch: the settings, the byte tokenizer, the default prompt.

The CLI (`moedesk sample`, `moedesk route`), the TUI's sample view and the trainer's
samples all read these; the torch side (KV cache, the decoding loop, routing capture)
is `generate.py`.

- `SampleSettings`: max_new_tokens, temperature (0 = greedy), top_k (0 = off), top_p
  (1 = off) and seed, with their defaults and allowed ranges in one place.
- `ByteTokenizer`: the tokenizer of the byte-level sources (`data.source` grammar and
  text): one token per UTF-8 byte, so any text can be encoded as long as every byte is
  below `model.vocab_size`. Decoding is incremental (`StreamDecoder`): a character that
  spans several bytes appears with its last byte, never as mojibake in between.
  Token-array data (`data.source = "tokens"`) comes with no tokenizer, so text cannot be
  encoded for it (`tokenizer_for` says so).
- `sentence_start`: the default prompt of the trainer's samples, the first words of a
  line of the validation text.
- `top_expert`: a token's top expert in a layer (the highest gate weight).
Pure Python. Tokens' texts stay raw here (what the model wrote); making them safe to
show (`display_piece`, `terminal_safe`) is the display's job, `moedesk.tui.format`.
"""

from __future__ import annotations

import codecs
import math
import random
from dataclasses import asdict, dataclass

BYTE_SOURCES = ("grammar", "text")
REPLACEMENT = "\ufffd"
SENTENCE_START_WORDS = 3
SENTENCE_START_MAX_BYTES = 32


class SampleError(Exception):
    """A sampling request that cannot be served; the message says what to change."""


class TokenizerError(SampleError):
    """Text this run's tokenizer cannot take (or a run without a tokenizer)."""


@dataclass(frozen=True)
class SampleSettings:
    """How to continue a prompt. `seed` fixes every random draw (CPU generator)."""

    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def problems(self) -> list[str]:
        """What is out of range, as "--option: got X; allowed ..." lines."""
        out = []
        if not 1 <= self.max_new_tokens <= 100_000:
            out.append(f"--max-new-tokens: got {self.max_new_tokens}; allowed 1 to 100000")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= 100):
            out.append(f"--temperature: got {self.temperature}; allowed 0 (greedy) to 100")
        if self.top_k < 0:
            out.append(f"--top-k: got {self.top_k}; allowed 0 (off) or a positive count")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            out.append(f"--top-p: got {self.top_p}; allowed > 0 and <= 1 (1 = off)")
        if not 0 <= self.seed < 2**63:
            out.append(f"--seed: got {self.seed}; allowed 0 to 2**63 - 1")
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def random_seed() -> int:
    """A fresh seed for a request that named none (reported, so it can be repeated)."""
    return random.SystemRandom().randrange(2**31)


class StreamDecoder:
    """Token ids -> text as it becomes complete (UTF-8 across byte tokens)."""

    def __init__(self):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        if not 0 <= token < 256:  # an id past the byte range (a vocabulary > 256)
            return self._utf8.decode(b"", final=True) + REPLACEMENT
        return self._utf8.decode(bytes([token]))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class ByteTokenizer:
    """One token per byte of UTF-8 text; ids must be below `vocab_size`."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str | bytes, what: str = "the prompt") -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        for offset, byte in enumerate(data):
            if byte >= self.vocab_size:
                char = _char_at(data, offset)
                raise TokenizerError(
                    f"{what} has byte 0x{byte:02x} ({char!r}) at byte {offset}, outside this "
                    f"model's vocabulary (model.vocab_size = {self.vocab_size}: bytes 0x00 to "
                    f"0x{self.vocab_size - 1:02x}); use text the run was trained on")
        return list(data)

    def decode(self, ids: list[int]) -> str:
        decoder = StreamDecoder()
        return "".join(decoder.feed(t) for t in ids) + decoder.flush()

    def stream(self) -> StreamDecoder:
        return StreamDecoder()


def _char_at(data: bytes, offset: int) -> str:
    """The character the byte at `offset` belongs to (for messages)."""
    start = offset
    while start > 0 and offset - start < 3 and data[start] & 0xC0 == 0x80:
        start -= 1
    return data[start:start + 4].decode("utf-8", "replace")[:1]


def tokenizer_for(config: dict) -> ByteTokenizer:
    """The tokenizer of a run from its stored config (`profile_to_dict` output)."""
    source = config["data"]["source"]
    if source not in BYTE_SOURCES:
        raise TokenizerError(
            f"this run trains on data.source = {source!r}: token ids with no tokenizer, so "
            "moedesk cannot turn a text prompt into its tokens or its output into text; "
            "sampling works for runs on byte-level data (grammar, text)")
    return ByteTokenizer(int(config["model"]["vocab_size"]))


def sentence_start(text: bytes, words: int = SENTENCE_START_WORDS) -> bytes:
    """The first `words` words of the first full line of `text` (a prompt that starts a
    sentence the way the data does); the text's first words when it has no line break."""
    newline = text.find(b"\n")
    start = newline + 1 if 0 <= newline < len(text) - 1 else 0
    line = text[start:].split(b"\n", 1)[0].lstrip()
    picked = b" ".join(line.split(b" ")[:words]).strip()
    return picked[:SENTENCE_START_MAX_BYTES] or text[:SENTENCE_START_MAX_BYTES]


def top_expert(route: tuple[list[int], list[float]]) -> int:
    """A token's top expert in one layer: the chosen one with the highest gate weight."""
    experts, gates = route
    return experts[max(range(len(gates)), key=gates.__getitem__)]

