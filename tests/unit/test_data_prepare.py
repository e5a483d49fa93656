"""Prepared token data: the BPE preparation, its errors, the tokenizer interface, val_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from moedesk.data.manifest import read_manifest
from moedesk.data.prepare import PrepareError, chunks, prepare
from moedesk.data.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    byte_level_tokenizer_json,
    token_classes,
)
from moedesk.profiles import ProfileError, load_profile
from moedesk.train.data import LMData
from moedesk.train.ternary.data import load_data
from moedesk.train.ternary.trits import write_trit_samples

REPO = Path(__file__).resolve().parents[2]
TEXT = ("The quick brown fox jumps over the lazy dog. " * 8 + "\n"
        "Numbers like 12345 and 678 appear too; so do symbols: (a, b) -> [c]!\n") * 60


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prep")
    (root / "a.txt").write_text(TEXT + "ünïcödé ✓ 🎉\n", encoding="utf-8")
    prepare([root / "a.txt"], root / "ds", vocab_size=300)
    return root / "ds"


def test_prepare_writes_tokens_tokenizer_and_manifest(folder):
    m = read_manifest(folder)
    assert m.vocab_size == 300 and m.dtype == "uint16" and m.eot_id == 0
    tok = BPETokenizer(m.tokenizer_file)
    assert tok.vocab_size == 300 and tok.eot_id == 0
    train = np.fromfile(m.train_file, dtype="<u2")
    val = np.fromfile(m.val_file, dtype="<u2")
    assert len(train) == m.data["train"]["tokens"] and len(val) == m.data["val"]["tokens"]
    # train then val decode back to the whole source text (one <|endoftext|> per document)
    text = tok.decode_bytes(train.tolist()) + tok.decode_bytes(val.tolist())
    assert text.decode("utf-8") == TEXT + "ünïcödé ✓ 🎉\n"
    source = m.data["sources"][0]
    assert source["bytes"] == len((TEXT + "ünïcödé ✓ 🎉\n").encode()) and len(source["sha256"]) == 64


def test_chunked_encoding_equals_whole_text_encoding(folder):
    tok = BPETokenizer(folder / "tokenizer.json")
    text = TEXT + "  trailing spaces  \n\n  indented\nnext\n"
    whole = tok.encode(text)
    assert [i for c in chunks(text, 100) for i in tok.encode(c)] == whole
    assert len(list(chunks(text, 100))) > 10


def test_stream_decoding_never_splits_a_character(folder):
    tok = BPETokenizer(folder / "tokenizer.json")
    ids = tok.encode("ünïcödé ✓ 🎉")
    stream = tok.stream()
    pieces = [stream.feed(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == "ünïcödé ✓ 🎉" and "\ufffd" not in "".join(pieces)
    assert tok.stream().feed(0) == "<|endoftext|>"
    assert tok.stream().feed(10_000) == "\ufffd"


def test_word_classes_of_bpe_pieces(folder):
    tok = BPETokenizer(folder / "tokenizer.json")
    table, names = token_classes(tok)
    label = {piece: names[table[tok.encode(piece)[0]]] for piece in (" quick", "The", "12")}
    assert len(tok.encode(" quick")) == 1  # a merged word piece
    assert label[" quick"] == "word"
    assert names[table[tok.encode("!")[0]]] == "punct" and names[table[0]] == "other"
    _, byte_names = token_classes(ByteTokenizer(256))
    assert byte_names == ("letter", "digit", "space", "punct", "other")


def test_byte_level_export_tokenizer_maps_bytes_exactly():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(byte_level_tokenizer_json())
    text = "héllo\x00 \t\r\n wörld 🎉 <|endoftext|>"
    ids = tok.encode(text).ids
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text and tok.get_vocab_size() == 256


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "is empty"),
    (b"  \n\t ", "is empty (only whitespace)"),
    (b"abc\x00def", "looks binary (a NUL byte at offset 3)"),
    (b"caf\xe9 latin-1", "not UTF-8 text (invalid byte 0xe9 at offset 3)"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, content, message):
    path = tmp_path / "in.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PrepareError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare([path], tmp_path / "out", vocab_size=300)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == (["in.txt"] if content is not None else [])


def test_a_vocabulary_larger_than_the_text_supports_is_refused(tmp_path):
    (tmp_path / "small.txt").write_text("tiny text\n" * 3 + "more tiny text here\n" * 2)
    with pytest.raises(PrepareError, match=r"--vocab-size 5000 is larger than the text "
                                           r"supports: .* give only \d+ tokens"):
        prepare([tmp_path / "small.txt"], tmp_path / "out", vocab_size=5000)
    with pytest.raises(PrepareError, match="--vocab-size: got 100; allowed 257"):
        prepare([tmp_path / "small.txt"], tmp_path / "out", vocab_size=100)
    assert not (tmp_path / "out").exists()


def test_out_must_be_new_or_empty(tmp_path, folder):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(PrepareError, match="exists and is not empty"):
        prepare([], tmp_path / "full", builtin="pydoc", vocab_size=300)
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"


def _profile(tmp_path: Path, data: str, vocab: int = 300, kind: str = "dense") -> Path:
    path = tmp_path / "p.toml"
    path.write_text(f'name = "p"\nkind = "{kind}"\nseed = 0\n[model]\nvocab_size = {vocab}\n'
                    f'dim = 32\nn_layers = 1\nn_heads = 2\nn_kv_heads = 1\nmax_seq_len = 32\n'
                    f'[train]\nsteps = 2\nwarmup_steps = 0\n[data]\nseq_len = 16\n{data}\n')
    return path


def test_profile_reads_the_prepared_folder_and_checks_its_vocabulary(tmp_path, folder):
    profile = load_profile(_profile(tmp_path, f'source = "tokens"\npath = "{folder}"'))
    data = LMData(profile.data, 0, 2, 300)
    assert len(data.splits["val"]) == read_manifest(folder).data["val"]["tokens"]
    assert data.label_names[0] == "word"
    with pytest.raises(ProfileError) as err:
        load_profile(_profile(tmp_path, f'source = "tokens"\npath = "{folder}"', vocab=256))
    assert "model.vocab_size: got 256; the prepared data in" in str(err.value)
    assert "set model.vocab_size = 300" in str(err.value)
    with pytest.raises(ProfileError, match=r"data.path: .*no such file or folder.*moedesk "
                                           r"data prepare"):
        load_profile(_profile(tmp_path, f'source = "tokens"\npath = "{tmp_path / "nope"}"'))


def test_val_path_replaces_the_tail_split_for_lm_kinds(tmp_path, folder):
    train_text, val_text = tmp_path / "train.txt", tmp_path / "val.txt"
    train_text.write_text("abc " * 500)
    val_text.write_text("xyz " * 100)
    profile = load_profile(_profile(tmp_path, f'source = "text"\npath = "{train_text}"\n'
                                              f'val_path = "{val_text}"', vocab=256))
    data = LMData(profile.data, 0, 2, 256)
    assert len(data.splits["train"]) == 2000 and bytes(data.splits["val"].tolist()) == \
        val_text.read_bytes()
    # a text val_path for BPE data is encoded with the data's tokenizer
    bpe = load_profile(_profile(tmp_path, f'source = "tokens"\npath = "{folder}"\n'
                                          f'val_path = "{val_text}"'))
    tokens = LMData(bpe.data, 0, 2, 300).splits["val"].tolist()
    assert BPETokenizer(folder / "tokenizer.json").decode(tokens) == val_text.read_text()
    # a token file: a prepared val.bin
    other = load_profile(_profile(tmp_path, f'source = "tokens"\npath = "{folder}/train.bin"\n'
                                            f'val_path = "{folder}/val.bin"'))
    assert len(LMData(other.data, 0, 2, 300).splits["train"]) == \
        read_manifest(folder).data["train"]["tokens"]
    with pytest.raises(ProfileError, match="data.val_path: got .*no such file"):
        load_profile(_profile(tmp_path, f'source = "text"\npath = "{train_text}"\n'
                                        f'val_path = "missing.txt"', vocab=256))


def test_val_path_for_the_ternary_kind_reads_a_trit_file(tmp_path):
    gen = torch.Generator().manual_seed(0)
    train = [torch.randint(-1, 2, (64,), generator=gen, dtype=torch.int8) for _ in range(40)]
    held = [torch.randint(-1, 2, (64,), generator=gen, dtype=torch.int8) for _ in range(7)]
    write_trit_samples(tmp_path / "train_data.bin", train)
    write_trit_samples(tmp_path / "test_data.bin", held)
    path = tmp_path / "t.toml"
    path.write_text((REPO / "profiles" / "tiny_ternary.toml").read_text())
    profile = load_profile(path, {"data.source": "trits", "data.path": "train_data.bin",
                                  "data.val_path": "test_data.bin",
                                  "train.batch_size": 8, "ternary.negatives": "corrupt"})
    data = load_data(profile)
    assert len(data.held_out_BW) == 7 and len(data.train_BW) == 40
    width = data.held_out_BW.shape[1]
    assert torch.equal(data.held_out_BW[0, :64], held[0][:width])
