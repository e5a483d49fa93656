"""A prepared token folder (`moedesk data prepare --out DIR`) and what a data path means.

A folder holds `tokenizer.json` (Hugging Face `tokenizers` format), `train.bin` and
`val.bin` (little-endian uint16 token ids when the vocabulary fits 65,536, else uint32,
no header) and `manifest.json`:

    {"format": "moedesk-tokens-1", "vocab_size": 8192, "dtype": "uint16",
     "tokenizer": "byte-level-bpe", "eot_id": 0,
     "train": {"file": "train.bin", "tokens": N, "documents": D},
     "val": {"file": "val.bin", "tokens": M, "documents": d, "split": "files" | "tail"},
     "sources": [{"path": ..., "bytes": ..., "sha256": ..., "split": "train" | "val"}],
     "tokenizer_sha256": ..., "created_by": "moedesk 0.1.0"}

`dataset_files(path)` tells what a `[data] path` (or `val_path`) names: a prepared folder,
a `.bin` beside such a manifest (its dtype and tokenizer), a bare `.npy`/`.bin` token
array, or (`kind="text"`) anything else. JSON only, so profile validation can call it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
TRAIN_FILE = "train.bin"
VAL_FILE = "val.bin"
FORMAT = "moedesk-tokens-1"
DTYPES = ("uint16", "uint32")


class ManifestError(Exception):
    """A prepared folder (or token file) that cannot be used; the message names it."""


@dataclass(frozen=True)
class Manifest:
    folder: Path
    vocab_size: int
    dtype: str
    eot_id: int | None
    data: dict

    @property
    def train_file(self) -> Path:
        return self.folder / self.data["train"]["file"]

    @property
    def val_file(self) -> Path | None:
        val = self.data.get("val")
        return self.folder / val["file"] if val else None

    @property
    def tokenizer_file(self) -> Path:
        return self.folder / TOKENIZER_FILE


def dtype_for(vocab_size: int) -> str:
    """The narrowest token dtype that holds every id of the vocabulary."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


def read_manifest(folder: str | Path) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise ManifestError(f"{folder} is not a folder; prepare one with `moedesk data prepare "
                            f"TEXT... --out {folder}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{folder} has no {MANIFEST_FILE}; it is not a prepared token "
                            "folder (make one with `moedesk data prepare`)") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from None
    try:
        if data.get("format") != FORMAT:
            raise ManifestError(f"{path}: format {data.get('format')!r} is not {FORMAT!r}")
        vocab, dtype = int(data["vocab_size"]), str(data["dtype"])
        if dtype not in DTYPES:
            raise ManifestError(f"{path}: dtype {dtype!r}; allowed values: {', '.join(DTYPES)}")
        manifest = Manifest(folder, vocab, dtype, data.get("eot_id"), data)
        files = [manifest.train_file] + ([manifest.val_file] if manifest.val_file else [])
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{path} is missing or has a bad field: {exc}") from None
    for file in files + [manifest.tokenizer_file]:
        if not file.is_file():
            raise ManifestError(f"{folder}: {file.name} named by {MANIFEST_FILE} is missing")
    return manifest


@dataclass(frozen=True)
class DataFiles:
    """What a data path names. kind: "folder" (prepared), "tokens" (an array file) or
    "text"; for tokens, dtype is "npy", "uint16" or "uint32"."""

    kind: str
    train: Path
    val: Path | None = None
    dtype: str = "uint16"
    tokenizer: Path | None = None
    vocab_size: int | None = None


def dataset_files(path: str | Path, text_ok: bool = False) -> DataFiles:
    """Resolve a `[data] path` / `val_path`; ManifestError naming it when unusable."""
    path = Path(path)
    if path.is_dir():
        m = read_manifest(path)
        return DataFiles("folder", m.train_file, m.val_file, m.dtype, m.tokenizer_file,
                         m.vocab_size)
    if not path.is_file():
        raise ManifestError(f"no such file or folder: {path}")
    if path.suffix == ".npy":
        return DataFiles("tokens", path, dtype="npy")
    if path.suffix == ".bin":
        beside = path.parent / MANIFEST_FILE
        if beside.is_file():  # a prepared folder's train.bin or val.bin
            m = read_manifest(path.parent)
            return DataFiles("tokens", path, dtype=m.dtype, tokenizer=m.tokenizer_file,
                             vocab_size=m.vocab_size)
        return DataFiles("tokens", path)
    if text_ok:
        return DataFiles("text", path)
    raise ManifestError(f"{path}: a token file is a prepared folder, a .npy array or a .bin "
                        "of uint16 ids")
