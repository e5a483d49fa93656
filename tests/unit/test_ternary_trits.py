"""GF(3) arithmetic, the byte encoders and the seeds' trit-sample file."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from moedesk.train.ternary.trits import (
    TritFileError,
    decode_balanced,
    encode_balanced,
    encode_letters,
    gf3_add,
    gf3_mul,
    gf3_reduce,
    read_trit_samples,
    write_trit_samples,
)

# balanced GF(3): the residues {0, 1, 2} written as {0, 1, -1}
ADD = {(-1, -1): 1, (-1, 0): -1, (-1, 1): 0, (0, -1): -1, (0, 0): 0, (0, 1): 1,
       (1, -1): 0, (1, 0): 1, (1, 1): -1}
MUL = {(-1, -1): 1, (-1, 0): 0, (-1, 1): -1, (0, -1): 0, (0, 0): 0, (0, 1): 0,
       (1, -1): -1, (1, 0): 0, (1, 1): 1}


def _pairs():
    a = torch.tensor([p[0] for p in ADD], dtype=torch.int8)
    b = torch.tensor([p[1] for p in ADD], dtype=torch.int8)
    return a, b


def test_gf3_add_table_on_all_nine_pairs():
    a, b = _pairs()
    got = gf3_add(a, b)
    assert got.dtype == torch.int8
    assert {(int(x), int(y)): int(z) for x, y, z in zip(a, b, got, strict=True)} == ADD


def test_gf3_mul_table_on_all_nine_pairs():
    a, b = _pairs()
    got = gf3_mul(a, b)
    assert {(int(x), int(y)): int(z) for x, y, z in zip(a, b, got, strict=True)} == MUL


def test_gf3_is_a_field_wrap_and_reduce():
    one = torch.tensor([1], dtype=torch.int8)
    # adding +1 three times comes back: the wrap that the reference's Hebbian rule cycles on
    assert gf3_add(gf3_add(gf3_add(one, one), one), one).item() == 1
    assert gf3_reduce(torch.tensor([-4, -3, -2, 2, 3, 4, 5])).tolist() == [-1, 0, 1, -1, 0, 1, -1]


@pytest.mark.slow
@given(st.binary(max_size=300))
def test_balanced_encoding_round_trips(data):
    trits = encode_balanced(data)
    assert trits.dtype == torch.int8 and trits.numel() == 6 * len(data)
    assert bool(((trits >= -1) & (trits <= 1)).all())
    assert decode_balanced(trits) == data


def test_balanced_encoding_is_least_significant_trit_first():
    # 5 = 9 - 3 - 1 -> digits (1, 3, 9, ...) = (-1, -1, 1, 0, 0, 0)
    assert encode_balanced(b"\x05").tolist() == [-1, -1, 1, 0, 0, 0]
    assert encode_balanced(bytes([255])).tolist() == [0, 1, 1, 0, 0, 1]  # 255 = 243 + 9 + 3


def test_decode_rejects_non_byte_groups():
    with pytest.raises(ValueError, match="multiple of 6"):
        decode_balanced(torch.zeros(7, dtype=torch.int8))
    with pytest.raises(ValueError, match="outside 0..255"):
        decode_balanced(torch.full((6,), -1, dtype=torch.int8))


def test_letter_encoding_is_the_seeds_mapping():
    assert encode_letters(b"AMNZamnz 0!\n").tolist() == [1, 1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0]


def test_sample_file_round_trip_and_layout(tmp_path):
    samples = [torch.tensor([1, 0, -1], dtype=torch.int8), torch.zeros(0, dtype=torch.int8),
               torch.tensor([-1] * 5, dtype=torch.int8)]
    path = tmp_path / "s.bin"
    write_trit_samples(path, samples)
    raw = path.read_bytes()
    assert raw[:8] == struct.pack("<Q", 3)
    assert raw[8:16] == struct.pack("<Q", 3) and raw[16:19] == b"\x01\x00\xff"
    back = read_trit_samples(path)
    assert [s.tolist() for s in back] == [s.tolist() for s in samples]


def test_sample_file_errors_name_the_defect(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(b"\x01\x00")
    with pytest.raises(TritFileError, match="truncated header"):
        read_trit_samples(path)
    path.write_bytes(struct.pack("<Q", 2) + struct.pack("<Q", 1) + b"\x01")
    with pytest.raises(TritFileError, match="sample 1 of 2 has no length"):
        read_trit_samples(path)
    path.write_bytes(struct.pack("<Q", 1) + struct.pack("<Q", 4) + b"\x01\x00")
    with pytest.raises(TritFileError, match="declares 4 trits but only 2 bytes remain"):
        read_trit_samples(path)
    path.write_bytes(struct.pack("<Q", 1) + struct.pack("<Q", 3) + b"\x01\x02\x00")
    with pytest.raises(TritFileError, match=r"invalid trit at byte 17 \(sample 0, position 1\)"):
        read_trit_samples(path)
    path.write_bytes(struct.pack("<Q", 0) + b"\x00")
    with pytest.raises(TritFileError, match="1 trailing bytes"):
        read_trit_samples(path)
    with pytest.raises(TritFileError, match="cannot read"):
        read_trit_samples(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="outside"):
        write_trit_samples(path, [torch.tensor([2], dtype=torch.int8)])
