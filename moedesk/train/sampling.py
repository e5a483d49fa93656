"""What sampling needs without torch: the settings, the run's tokenizer, the default prompt.

The CLI (`moedesk sample`, `moedesk route`), the TUI's sample view and the trainer's
samples all read these; the torch side (KV cache, the decoding loop, routing capture)
is `generate.py`.

- `SampleSettings`: max_new_tokens, temperature (0 = greedy), top_k (0 = off), top_p
  (1 = off) and seed, with their defaults and allowed ranges in one place.
- `tokenizer_for`: a run's tokenizer (`moedesk.data.tokenizer`, re-exported here): one
  token per byte for the byte-level sources (`data.source` grammar and text), the BPE of
  a prepared token folder for `tokens` (the copy in the run folder first). Decoding is
  incremental (`StreamDecoder`): a character spread over tokens appears with its last
  one, never as mojibake in between. A bare token array comes with no tokenizer, so text
  cannot be encoded for it (`tokenizer_for` says so).
- `sentence_start`: the default prompt of the trainer's samples, the first words of a
  line of the validation text.
- `top_expert`: a token's top expert in a layer (the highest gate weight).
Pure Python. Tokens' texts stay raw here (what the model wrote); making them safe to
show (`display_piece`, `terminal_safe`) is the display's job, `moedesk.tui.format`.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from moedesk.data.manifest import ManifestError, dataset_files
from moedesk.data.tokenizer import (  # noqa: F401 - re-exported for the sampling callers
    REPLACEMENT,
    BPETokenizer,
    ByteTokenizer,
    StreamDecoder,
    Tokenizer,
    TokenizerError,
)
from moedesk.paths import tokenizer_file

BYTE_SOURCES = ("grammar", "text")
SENTENCE_START_WORDS = 3
SENTENCE_START_MAX_BYTES = 32


class SampleError(Exception):
    """A sampling request that cannot be served; the message says what to change."""


# what a sampling request can fail with: its settings, or text its tokenizer cannot take
SAMPLE_ERRORS = (SampleError, TokenizerError)


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


def tokenizer_for(config: dict, run_dir: str | Path | None = None) -> Tokenizer:
    """The tokenizer of a run from its stored config (`profile_to_dict` output): bytes for
    grammar and text; for tokens, the copy in the run folder (`run_dir`), else the
    prepared folder's own. A bare token array has none (TokenizerError)."""
    data, vocab_size = config["data"], int(config["model"]["vocab_size"])
    if data["source"] in BYTE_SOURCES:
        return ByteTokenizer(vocab_size)
    if run_dir is not None and tokenizer_file(run_dir).is_file():
        return BPETokenizer(tokenizer_file(run_dir))
    try:
        found = dataset_files(data["path"]).tokenizer if data.get("path") else None
    except ManifestError:
        found = None
    if found is None:
        raise TokenizerError(
            f"this run trains on data.source = {data['source']!r}: token ids with no tokenizer, "
            "so moedesk cannot turn a text prompt into its tokens or its output into text; "
            "prepare the data with `moedesk data prepare` (a folder with its tokenizer), or "
            "train on byte-level data (grammar, text)")
    return BPETokenizer(found)


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

