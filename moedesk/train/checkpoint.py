"""Checkpoints on disk: atomic writes, checksums, listing, verified loads.

A checkpoint is `checkpoints/step_XXXXXXXX.pt` (a plain `torch.save` dict that loads
without moedesk) plus a sidecar `step_XXXXXXXX.json` {step, size, sha256} written after
it. Both are written to a temporary name, fsynced and renamed, so a crash at any moment
leaves either the complete pair or nothing that `list_checkpoints` reports. The trainer
never deletes a checkpoint: the supervisor prunes to `checkpoint.keep` once the events up
to the newer one are committed (runner/checkpoints.py `prune_plan`), so a resume always
finds one the stored rows reach.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import torch

from moedesk.runner.checkpoints import (  # noqa: F401 - re-exported for trainers
    CheckpointError,
    CheckpointInfo,
    checkpoint_dir,
    checkpoint_path,
    find_checkpoint,
    list_checkpoints,
    verify_bytes,
    verify_checkpoint,
)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict, run_dir: Path, step: int) -> CheckpointInfo:
    """Write `state` for `step` atomically (the pair, then the folder, fsynced)."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(run_dir, step)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    try:
        _write_atomic(path, data)
        meta = {"step": step, "size": len(data), "sha256": digest, "file": path.name}
        _write_atomic(path.with_suffix(".json"), json.dumps(meta).encode())
        _fsync_dir(folder)
    except OSError as exc:
        path.with_suffix(".json").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None
    return CheckpointInfo(step, path, len(data), digest)


def load_checkpoint(path: Path, expected_sha256: str | None = None) -> dict:
    """Read and verify a checkpoint; every failure is a CheckpointError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if expected_sha256 is None:
        meta_path = path.with_suffix(".json")
        try:
            expected_sha256 = json.loads(meta_path.read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(f"checkpoint {path} has no readable checksum file "
                                  f"{meta_path.name}; it may be incomplete") from None
    verify_bytes(path, data, expected_sha256)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types on bad pickles
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict")
    return state
