"""Token arrays on disk: a prepared folder's `.bin` files (uint16/uint32, no header), a
`.npy` of integers, or a bare `.bin` of uint16 ids. numpy only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moedesk.data.manifest import ManifestError


def read_token_array(path: str | Path, dtype: str = "uint16") -> np.ndarray:
    """The ids of a token file as int64; ManifestError naming the file when unusable."""
    path = Path(path)
    try:
        if dtype == "npy":
            tokens = np.load(path, allow_pickle=False)
        else:
            tokens = np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read token file {path}: {exc}") from None
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ManifestError(f"token file {path} must hold a 1-D integer array, got "
                            f"{tokens.dtype} with shape {tokens.shape}")
    if len(tokens) and int(tokens.min()) < 0:
        raise ManifestError(f"token file {path} holds a negative id ({int(tokens.min())})")
    return tokens.astype(np.int64)


def write_token_array(path: str | Path, ids, dtype: str) -> int:
    """Write ids little-endian as `dtype`; returns the count."""
    array = np.asarray(ids, dtype=np.int64)
    if len(array) and int(array.max()) >= np.iinfo(dtype).max + 1:
        raise ValueError(f"id {int(array.max())} does not fit {dtype}")
    array.astype(np.dtype(dtype).newbyteorder("<")).tofile(path)
    return len(array)
