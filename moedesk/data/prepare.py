"""`moedesk data prepare`: text in, a prepared token folder out (manifest.py's format).

1. read the sources (text files, or a built-in corpus): each must exist, be non-empty
   and be UTF-8 text (a NUL byte or an invalid sequence means a binary file);
2. hold out validation text: the `--val` files, else the tail `val_fraction` of the
   text, cut at a line start;
3. train a byte-level BPE on the training text only, locally with Hugging Face
   `tokenizers` (nothing is downloaded): `<|endoftext|>` (id 0), the 256 byte
   characters, then merges up to `vocab_size`; a text too
   small to give that many merges (each seen at least twice) is an error, not a smaller
   vocabulary;
4. encode in chunks cut after newlines between non-space characters (byte-level
   pre-tokens never span one, so the ids equal a whole-text encoding), one
   `<|endoftext|>` after each document;
5. write everything into a temporary folder beside `out` and rename it into place, so a
   failure or an interrupt leaves no half-written dataset.
`report(stage, done, total)` is called as work progresses (the CLI draws a Rich bar).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from moedesk.data.builtin import builtin_documents
from moedesk.data.manifest import (
    FORMAT,
    MANIFEST_FILE,
    TOKENIZER_FILE,
    TRAIN_FILE,
    VAL_FILE,
    Manifest,
    dtype_for,
    read_manifest,
)
from moedesk.data.tokenizer import EOT
from moedesk.data.tokens import write_token_array

MIN_VOCAB = 257  # the 256 byte characters and <|endoftext|>
MAX_VOCAB = 1_000_000  # model.vocab_size's limit
CHUNK_CHARS = 1 << 16

Report = Callable[[str, int, int], None]


class PrepareError(Exception):
    """Input `moedesk data prepare` cannot use; the message names the file or option."""


def read_text(path: Path, what: str = "text file") -> str:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PrepareError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise PrepareError(f"{what} {path} is a folder; give text files") from None
    except OSError as exc:
        raise PrepareError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
    if not data.strip():
        raise PrepareError(f"{what} {path} is empty" + (" (only whitespace)" if data else ""))
    nul = data.find(b"\x00")
    if nul >= 0:
        raise PrepareError(f"{what} {path} looks binary (a NUL byte at offset {nul}); "
                           "prepare reads UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PrepareError(f"{what} {path} is not UTF-8 text (invalid byte 0x{data[exc.start]:02x} "
                           f"at offset {exc.start}); convert it to UTF-8 first") from None


def _source(path: Path, text: str, split: str) -> dict:
    data = text.encode("utf-8")
    return {"path": str(Path(path).resolve()), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "split": split}


def split_tail(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """The last `val_fraction` of the text (by characters, cut at a line start) as val."""
    total = sum(len(d) for d in docs)
    cut, seen = total - int(total * val_fraction), 0
    for i, doc in enumerate(docs):
        if seen + len(doc) > cut:
            at = doc.find("\n", cut - seen)
            if at < 0 or at + 1 >= len(doc):  # the cut is in the last line: the line before
                at = doc.rfind("\n", 0, cut - seen)
            at = len(doc) if at < 0 else at + 1
            head, tail = doc[:at], doc[at:]
            train = docs[:i] + ([head] if head.strip() else [])
            val = ([tail] if tail.strip() else []) + docs[i + 1:]
            return train, val
        seen += len(doc)
    return docs, []


def chunks(doc: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """Pieces of about `size` characters, each cut after a newline with a non-space
    character on both sides (no byte-level pre-token spans such a cut)."""
    start = 0
    while len(doc) - start > size:
        at = start + size
        while True:
            at = doc.find("\n", at)
            if at < 0 or at + 1 >= len(doc) or not (doc[at + 1].isspace()
                                                     or doc[at - 1].isspace()):
                break
            at += 1
        if at < 0 or at + 1 >= len(doc):
            break
        yield doc[start:at + 1]
        start = at + 1
    yield doc[start:]


def train_tokenizer(docs: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((piece for doc in docs for piece in chunks(doc)), trainer)
    return tok


def encode_documents(tok, docs: list[str], eot_id: int, report: Report, stage: str) -> list[int]:
    total, done, ids = sum(len(d) for d in docs), 0, []
    for doc in docs:
        pieces = list(chunks(doc))
        for batch_start in range(0, len(pieces), 16):
            batch = pieces[batch_start:batch_start + 16]
            for enc in tok.encode_batch(batch, add_special_tokens=False):
                ids.extend(enc.ids)
            done += sum(len(p) for p in batch)
            report(stage, done, total)
        ids.append(eot_id)
    return ids


def prepare(texts: list[Path], out: Path, vocab_size: int = 8192, val: list[Path] | None = None,
            val_fraction: float = 0.1, builtin: str | None = None, force: bool = False,
            report: Report | None = None) -> Manifest:
    """Build a prepared token folder at `out`; PrepareError on bad input (nothing written)."""
    report = report or (lambda *_: None)
    out = Path(out)
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise PrepareError(f"--vocab-size: got {vocab_size}; allowed {MIN_VOCAB} (the 256 "
                           f"bytes and {EOT}) to {MAX_VOCAB}")
    if not 0 < val_fraction < 1:
        raise PrepareError(f"--val-fraction: got {val_fraction}; allowed > 0 and < 1")
    if bool(texts) == bool(builtin):
        raise PrepareError("give text files or --builtin NAME (one of them)")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not force:
        raise PrepareError(f"--out {out} exists and is not empty; choose another folder or "
                           "pass --force to replace it")
    # 1. read
    sources, docs = [], []
    if builtin:
        try:
            docs, record = builtin_documents(builtin)
        except ValueError as exc:
            raise PrepareError(str(exc)) from None
        sources.append({**record, "split": "train+val" if not val else "train"})
    for i, path in enumerate(texts):
        text = read_text(path)
        docs.append(text)
        sources.append(_source(path, text, "train+val" if not val else "train"))
        report("reading", i + 1, len(texts))
    val_docs = []
    for path in val or []:
        text = read_text(path, "--val file")
        val_docs.append(text)
        sources.append(_source(path, text, "val"))
    # 2. hold out
    split = "files"
    if not val:
        docs, val_docs = split_tail(docs, val_fraction)
        split = "tail"
        if not val_docs or not docs:
            raise PrepareError(f"the text is too short to hold out {val_fraction:.0%} for "
                               "validation at a line break; give more text or --val FILES")
    # 3. tokenizer from the training text only
    report("training tokenizer", 0, 1)
    tok = train_tokenizer(docs, vocab_size)
    report("training tokenizer", 1, 1)
    got = tok.get_vocab_size()
    if got < vocab_size:
        raise PrepareError(f"--vocab-size {vocab_size} is larger than the text supports: its "
                           f"{sum(len(d) for d in docs):,} training characters give only {got} "
                           f"tokens (merges of pairs seen at least twice); use --vocab-size "
                           f"{got} or less, or more text")
    eot_id = tok.token_to_id(EOT)
    dtype = dtype_for(vocab_size)
    # 4 and 5. encode into a temporary folder, then move it into place
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        train_ids = encode_documents(tok, docs, eot_id, report, "encoding train")
        val_ids = encode_documents(tok, val_docs, eot_id, report, "encoding val")
        tok.save(str(tmp / TOKENIZER_FILE))
        write_token_array(tmp / TRAIN_FILE, train_ids, dtype)
        write_token_array(tmp / VAL_FILE, val_ids, dtype)
        tokenizer_sha = hashlib.sha256((tmp / TOKENIZER_FILE).read_bytes()).hexdigest()
        manifest = {
            "format": FORMAT, "vocab_size": vocab_size, "dtype": dtype,
            "tokenizer": "byte-level-bpe", "eot_id": eot_id, "tokenizer_sha256": tokenizer_sha,
            "train": {"file": TRAIN_FILE, "tokens": len(train_ids), "documents": len(docs)},
            "val": {"file": VAL_FILE, "tokens": len(val_ids), "documents": len(val_docs),
                    "split": split, **({"val_fraction": val_fraction} if split == "tail" else {})},
            "sources": sources, "created_by": "moedesk data prepare"}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_manifest(out)
