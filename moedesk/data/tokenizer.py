"""One tokenizer interface for every LM run: bytes, or a byte-level BPE trained locally.

- `ByteTokenizer`: one token per UTF-8 byte (`data.source` grammar and text); any text
  encodes as long as each byte is below `model.vocab_size`.
- `BPETokenizer`: a `tokenizer.json` written by `moedesk data prepare` (Hugging Face
  `tokenizers`' byte-level BPE). Decoding needs only the JSON (each token's bytes come
  from its string through the GPT-2 byte alphabet); encoding imports `tokenizers`.
Both give `encode(text) -> ids`, `decode(ids) -> str`, `token_bytes(id)`, and `stream()`,
a `StreamDecoder` that turns ids into text as it becomes complete: a character split over
tokens appears with its last byte, never as mojibake in between.

`token_classes` labels every id for the expert-by-class analysis: byte classes for bytes
(`BYTE_CLASS_LABELS`), and for BPE pieces word classes (`BPE_CLASS_LABELS`: a piece
that starts a word, one that continues it, digits, space, punctuation, other).
`byte_level_tokenizer_json` is the byte-exact `tokenizers` JSON that export ships for
byte-level runs (id = byte value). Pure Python besides the lazy `tokenizers` import.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from functools import cache
from pathlib import Path

REPLACEMENT = "\ufffd"
EOT = "<|endoftext|>"
BYTE_CLASS_LABELS: tuple[str, ...] = ("letter", "digit", "space", "punct", "other")
BPE_CLASS_LABELS: tuple[str, ...] = ("word", "subword", "digit", "space", "punct", "other")
_PUNCT = b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
_SPACE = b" \t\n\r\x0b\x0c"


class TokenizerError(Exception):
    """Text a tokenizer cannot take, or a tokenizer file that cannot be read."""


@cache
def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE's alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(out.items()))


@cache
def _byte_of_char() -> dict[str, int]:
    return {c: b for b, c in byte_alphabet().items()}


def byte_class(b: int) -> str:
    if 65 <= b <= 90 or 97 <= b <= 122:
        return "letter"
    if 48 <= b <= 57:
        return "digit"
    if b in _SPACE:
        return "space"
    return "punct" if b in _PUNCT else "other"


class StreamDecoder:
    """Token ids -> text as it becomes complete (UTF-8 across tokens)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        special = self.tokenizer.special_text(token)
        if special is not None:  # an unknown id or a special token ends any open character
            return self._utf8.decode(b"", final=True) + special
        return self._utf8.decode(self.tokenizer.token_bytes(token))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class Tokenizer:
    """The interface; `kind` is "bytes" or "bpe"."""

    kind = ""
    vocab_size = 0

    def encode(self, text: str | bytes, what: str = "the prompt") -> list[int]:
        raise NotImplementedError

    def token_bytes(self, token: int) -> bytes:
        raise NotImplementedError

    def special_text(self, token: int) -> str | None:
        """The text of a special or unknown id (None for an ordinary token)."""
        return None

    def decode_bytes(self, ids) -> bytes:
        return b"".join(self.token_bytes(int(t)) for t in ids if self.special_text(int(t)) is None)

    def decode(self, ids) -> str:
        decoder = self.stream()
        return "".join(decoder.feed(int(t)) for t in ids) + decoder.flush()

    def stream(self) -> StreamDecoder:
        return StreamDecoder(self)

    def describe(self) -> dict:
        """What a checkpoint records of the tokenizer it was trained with."""
        return {"kind": self.kind, "vocab_size": self.vocab_size}


class ByteTokenizer(Tokenizer):
    """One token per byte of UTF-8 text; ids must be below `vocab_size`."""

    kind = "bytes"

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

    def token_bytes(self, token: int) -> bytes:
        return bytes([token])

    def special_text(self, token: int) -> str | None:
        return None if 0 <= token < 256 else REPLACEMENT  # an id past the byte range


class BPETokenizer(Tokenizer):
    """A byte-level BPE `tokenizer.json` (Hugging Face `tokenizers` format)."""

    kind = "bpe"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.json_text = self.path.read_text(encoding="utf-8")
            spec = json.loads(self.json_text)
            vocab: dict[str, int] = spec["model"]["vocab"]
            added = spec.get("added_tokens") or []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TokenizerError(f"cannot read tokenizer {self.path}: {exc}") from None
        self.sha256 = hashlib.sha256(self.json_text.encode("utf-8")).hexdigest()
        self.vocab_size = max([*vocab.values(), *(a["id"] for a in added)]) + 1
        table = _byte_of_char()
        self._pieces: list[bytes | None] = [None] * self.vocab_size
        for piece, i in vocab.items():
            try:
                self._pieces[i] = bytes(table[c] for c in piece)
            except KeyError:
                raise TokenizerError(f"tokenizer {self.path}: token {piece!r} is not byte-level "
                                     "BPE (make it with `moedesk data prepare`)") from None
        self._specials = {a["id"]: a["content"] for a in added}
        self.eot_id = next((i for i, c in self._specials.items() if c == EOT), None)
        self._encoder = None

    def _hf(self):
        if self._encoder is None:
            try:
                from tokenizers import Tokenizer as HFTokenizer
            except ImportError:
                raise TokenizerError("encoding with a BPE tokenizer needs the `tokenizers` "
                                     "package (pip install tokenizers)") from None
            self._encoder = HFTokenizer.from_str(self.json_text)
        return self._encoder

    def encode(self, text: str | bytes, what: str = "the prompt") -> list[int]:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TokenizerError(f"{what} is not UTF-8 text (byte {exc.start})") from None
        return self._hf().encode(text, add_special_tokens=False).ids

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces[token] if 0 <= token < self.vocab_size else None
        return piece if piece is not None else b""

    def special_text(self, token: int) -> str | None:
        if token in self._specials:
            return self._specials[token]
        return REPLACEMENT if not (0 <= token < self.vocab_size) or \
            self._pieces[token] is None else None

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "file": self.path.name,
                "sha256": self.sha256}


def _char_at(data: bytes, offset: int) -> str:
    """The character the byte at `offset` belongs to (for messages)."""
    start = offset
    while start > 0 and offset - start < 3 and data[start] & 0xC0 == 0x80:
        start -= 1
    return data[start:start + 4].decode("utf-8", "replace")[:1]


def token_classes(tokenizer: Tokenizer) -> tuple[list[int], tuple[str, ...]]:
    """(class id of every token id, class names) for the expert-by-class analysis."""
    if tokenizer.kind == "bytes":
        names = BYTE_CLASS_LABELS
        return ([names.index(byte_class(b)) for b in range(min(256, tokenizer.vocab_size))]
                + [names.index("other")] * max(0, tokenizer.vocab_size - 256), names)
    names = BPE_CLASS_LABELS
    out = []
    for token in range(tokenizer.vocab_size):
        piece = b"" if tokenizer.special_text(token) is not None else tokenizer.token_bytes(token)
        classes = {byte_class(b) for b in piece}
        body = {byte_class(b) for b in piece.lstrip(b" ")}
        if not piece:
            label = "other"
        elif body == {"letter"}:
            label = "word" if piece[:1] == b" " else "subword"
        elif classes == {"space"}:
            label = "space"
        elif body == {"digit"}:
            label = "digit"
        elif body == {"punct"}:
            label = "punct"
        else:
            label = "other"
        out.append(names.index(label))
    return out, names


def byte_level_tokenizer_json() -> str:
    """A `tokenizers` JSON whose ids are exactly the UTF-8 bytes (0..255): byte-level
    pre-tokenization without splitting, a BPE with the 256 byte characters and no merges."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {c: b for b, c in byte_alphabet().items()}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok.to_str()


def load_tokenizer(path: str | Path) -> BPETokenizer:
    return BPETokenizer(path)


def install_in_run(tokenizer: Tokenizer | None, run_dir: str | Path) -> None:
    """Copy a BPE tokenizer into the run folder (`paths.tokenizer_file`), so sampling,
    routing views and export decode with it whatever happens to the data folder. A copy
    already there must be the same file (a resumed run whose data was re-prepared with
    another tokenizer would read its ids wrongly)."""
    if not isinstance(tokenizer, BPETokenizer):
        return
    from moedesk.paths import tokenizer_file

    target = tokenizer_file(run_dir)
    if target.is_file():
        if hashlib.sha256(target.read_bytes()).hexdigest() != tokenizer.sha256:
            raise TokenizerError(f"the run's tokenizer {target} differs from the data's "
                                 f"{tokenizer.path}: the data was prepared again with another "
                                 "vocabulary; start a new run (or --init-from this one)")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(tokenizer.json_text, encoding="utf-8")
    tmp.replace(target)
