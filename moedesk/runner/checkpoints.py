"""Checkpoint files without torch: listing, sidecar metadata, checksum verification.

The runner and CLI use this to find and verify checkpoints before launching a resume
(they may not import torch); `moedesk.train.checkpoint` writes and loads them. Like
`protocol.py`, it is a contract between trainer and runner; the folder's name lives in
`moedesk.paths`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from moedesk.paths import checkpoint_dir


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read; the message names the file."""


@dataclass
class CheckpointInfo:
    step: int
    path: Path
    size: int
    sha256: str


def list_checkpoints(run_dir: Path) -> list[CheckpointInfo]:
    """Complete checkpoints (sidecar present, size matches), oldest first."""
    out = []
    for meta_path in sorted(checkpoint_dir(run_dir).glob("step_*.json")):
        try:
            meta = json.loads(meta_path.read_text())
            path = meta_path.with_suffix(".pt")
            if path.stat().st_size != meta["size"]:
                continue
            out.append(CheckpointInfo(int(meta["step"]), path, int(meta["size"]), meta["sha256"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda c: c.step)


def _truncated(run_dir: Path) -> list[tuple[int, Path, int, int]]:
    """(step, path, size on disk, recorded size) of checkpoints whose file no longer has the
    size its sidecar records. The sidecar is written only after the file is complete, so
    this is damage after the fact (a disk problem, a copy cut short), not a crash."""
    out = []
    for meta_path in checkpoint_dir(run_dir).glob("step_*.json"):
        try:
            meta = json.loads(meta_path.read_text())
            path = meta_path.with_suffix(".pt")
            size = path.stat().st_size
            if size != meta["size"]:
                out.append((int(meta["step"]), path, size, int(meta["size"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def find_checkpoint(run_dir: Path, step: int | None = None,
                    at_most: int | None = None) -> CheckpointInfo:
    """The checkpoint at `step`, or the newest one. With `at_most` (the last step a run's
    stored rows reach): the newest at or before it, else the oldest, so a resume leaves
    the smallest gap in the curves. Raises CheckpointError when there is none, or when
    the wanted (or a newer) checkpoint is truncated, rather than silently going back."""
    found = list_checkpoints(run_dir)
    limit = step if step is not None else at_most
    if step is not None:
        found = [c for c in found if c.step == step]
    elif at_most is not None and found:
        # the newest at or before at_most; when every one is newer, the oldest (least lost)
        reach = [c for c in found if c.step <= at_most]
        found = reach or found[:1]
        limit = found[-1].step if not reach else at_most
    chosen = found[-1].step if found else -1
    for bad_step, path, size, recorded in sorted(_truncated(run_dir)):
        if chosen < bad_step <= (bad_step if limit is None else limit):
            older = [c.step for c in list_checkpoints(run_dir) if c.step < bad_step]
            hint = f"; resume from an older one with --at {older[-1]}" if older else ""
            raise CheckpointError(f"checkpoint {path} is truncated: {size} bytes on disk, "
                                  f"{recorded} recorded{hint}")
    if not found:
        which = f"at step {step}" if step is not None else "at all"
        have = [c.step for c in list_checkpoints(run_dir)]
        listed = f"; checkpoints exist at steps {', '.join(map(str, have))}" \
            if step is not None and have else ""
        raise CheckpointError(f"no complete checkpoint {which} in {checkpoint_dir(run_dir)}"
                              f"{listed}")
    return found[-1]


def verify_bytes(path: Path, data: bytes, expected_sha256: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: sha256 {actual[:12]}... "
                              f"does not match the recorded {expected_sha256[:12]}...")


def verify_checkpoint(info: CheckpointInfo) -> None:
    """Re-hash a checkpoint file; CheckpointError naming it when it does not match."""
    try:
        data = info.path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {info.path}: {exc.strerror or exc}") from None
    verify_bytes(info.path, data, info.sha256)
