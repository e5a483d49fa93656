"""Trits and balanced GF(3): arithmetic, byte encoders and the seeds' trit-sample file.

A trit is an int8 in {-1, 0, +1}. Balanced GF(3) addition wraps (1 + 1 = -1,
-1 + -1 = +1) and multiplication is the ordinary product; the reference's
`trit_ops` helpers shift to {0, 1, 2} and never shift back, so they are not used
as a model here (see docs/ternary.md).

Encoders turn bytes into trits: `encode_balanced` is lossless (6 balanced-ternary
digits per byte, 3^6 = 729 >= 256, least-significant digit first) and `decode_balanced`
inverts it; `encode_letters` is the seeds' TextToTernary (A-M -> +1, N-Z -> -1,
anything else -> 0), one trit per byte and lossy.

The sample file (seeds/000 "LoadData") is little-endian: u64 sample count, then per
sample a u64 length and that many int8 trits (0xFF = -1, 0x00 = 0, 0x01 = +1).

Shape letters: none; every tensor here is one flat trit (or byte) vector.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

TRITS_PER_BYTE = 6  # balanced encoding: 3**6 = 729 >= 256
_POWERS = torch.tensor([3**i for i in range(TRITS_PER_BYTE)], dtype=torch.int16)


class TritFileError(ValueError):
    """A trit-sample file that cannot be read; the message names the file and offset."""


def gf3_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Balanced GF(3) sum of trit tensors (wraps: 1+1 = -1, -1+-1 = +1)."""
    s = a.to(torch.int16) + b.to(torch.int16)
    return (torch.remainder(s + 1, 3) - 1).to(torch.int8)


def gf3_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Balanced GF(3) product: the ordinary product of two trits."""
    return (a.to(torch.int16) * b.to(torch.int16)).to(torch.int8)


def gf3_reduce(values: torch.Tensor) -> torch.Tensor:
    """Any integer tensor taken mod 3 into balanced trits {-1, 0, +1}."""
    return (torch.remainder(values.to(torch.int64) + 1, 3) - 1).to(torch.int8)


def is_trits(t: torch.Tensor) -> bool:
    return bool(((t >= -1) & (t <= 1)).all())


def _as_uint8(data: bytes | torch.Tensor) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data.to(torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(
        0, dtype=torch.uint8)


def encode_balanced(data: bytes | torch.Tensor) -> torch.Tensor:
    """Bytes -> int8 trits, 6 balanced-ternary digits per byte, least significant first."""
    value = _as_uint8(data).to(torch.int16).reshape(-1)
    digits = []
    for _ in range(TRITS_PER_BYTE):
        digit = torch.remainder(value + 1, 3) - 1  # balanced digit in {-1, 0, 1}
        digits.append(digit)
        value = torch.div(value - digit, 3, rounding_mode="floor")
    return torch.stack(digits, dim=-1).reshape(-1).to(torch.int8)


def decode_balanced(trits: torch.Tensor) -> bytes:
    """Inverse of `encode_balanced`; raises ValueError on a length or range mismatch."""
    if trits.numel() % TRITS_PER_BYTE:
        raise ValueError(f"{trits.numel()} trits is not a multiple of {TRITS_PER_BYTE}")
    groups = trits.reshape(-1, TRITS_PER_BYTE).to(torch.int16)
    values = (groups * _POWERS).sum(dim=1)
    if values.numel() and (values.min() < 0 or values.max() > 255):
        raise ValueError("trit groups decode to values outside 0..255; not a byte encoding")
    return bytes(values.to(torch.uint8).tolist())


def encode_letters(data: bytes | torch.Tensor) -> torch.Tensor:
    """The seeds' TextToTernary: A-M -> +1, N-Z -> -1, every other byte -> 0."""
    b = _as_uint8(data).reshape(-1)
    upper_first = (b >= ord("A")) & (b <= ord("M"))
    upper_second = (b >= ord("N")) & (b <= ord("Z"))
    return upper_first.to(torch.int8) - upper_second.to(torch.int8)


ENCODERS = {"balanced": (encode_balanced, TRITS_PER_BYTE), "letters": (encode_letters, 1)}


def write_trit_samples(path: str | Path, samples: list[torch.Tensor]) -> None:
    """Write samples (1-D trit tensors of any lengths) in the seeds' LoadData format."""
    parts = [struct.pack("<Q", len(samples))]
    for i, sample in enumerate(samples):
        flat = sample.reshape(-1)
        if not is_trits(flat):
            raise ValueError(f"sample {i} holds values outside {{-1, 0, 1}}")
        parts.append(struct.pack("<Q", flat.numel()))
        parts.append(flat.to(torch.int8).numpy().tobytes())
    Path(path).write_bytes(b"".join(parts))


def read_trit_samples(path: str | Path) -> list[torch.Tensor]:
    """Read the seeds' LoadData format; every defect is a TritFileError naming the offset."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TritFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) < 8:
        raise TritFileError(f"{path}: truncated header: {len(data)} bytes, need 8 for the "
                            "u64 sample count")
    (count,) = struct.unpack_from("<Q", data, 0)
    offset, samples = 8, []
    for i in range(count):
        if offset + 8 > len(data):
            raise TritFileError(f"{path}: truncated at byte {offset}: sample {i} of {count} has "
                                "no length field")
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 8
        if length > len(data) - offset:
            raise TritFileError(f"{path}: truncated at byte {offset}: sample {i} declares "
                                f"{length} trits but only {len(data) - offset} bytes remain")
        values = np.frombuffer(data, dtype=np.int8, count=length, offset=offset)
        bad = np.flatnonzero((values < -1) | (values > 1))
        if bad.size:
            j = int(bad[0])
            raise TritFileError(f"{path}: invalid trit at byte {offset + j} (sample {i}, "
                                f"position {j}): value {int(values[j])}, must be -1, 0 or 1")
        samples.append(torch.from_numpy(values.copy()))
        offset += length
    if offset != len(data):
        raise TritFileError(f"{path}: {len(data) - offset} trailing bytes after the {count} "
                            "declared samples")
    return samples
