"""Checkpoints on disk: atomic writes, checksums, listing, verified loads.

A checkpoint is `checkpoints/step_XXXXXXXX.pt` (a plain `torch.save` dict that loads
without moedesk) plus a sidecar `step_XXXXXXXX.json` {step, size, sha256} written after
it. Both are written to a temporary name, fsynced and renamed, so a crash at any moment
leaves either the complete pair or nothing that `list_checkpoints` reports. The trainer
never deletes a checkpoint: the supervisor prunes to `checkpoint.keep` once the events up
to the newer one are committed (runner/checkpoints.py `prune_plan`), so a resume always
finds one the stored rows reach.

Keep-best (`[checkpoint] keep_best`): a `BestTracker` beside the loop is offered each
measured value of the chosen metric (`profiles.schema.KEEP_BEST`: val/loss lowest,
ff/accuracy or seed000_score highest); a new best makes the loop checkpoint that step.
`save_checkpoint(..., best=tracker)` records the checkpoint's score in its sidecar and
rewrites `checkpoints/best.json` {step, keep_best, metric, value} atomically; the
supervisor's pruning never removes the checkpoint best.json marks, whatever `keep` says.
The tracker travels in the checkpoint, so a resumed run knows its best so far.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from pathlib import Path

import torch

from moedesk.paths import best_checkpoint_file
from moedesk.profiles.schema import KEEP_BEST
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


class BestTracker:
    """The best value so far of the `keep_best` metric, and the step that measured it."""

    def __init__(self, keep_best: str):
        self.keep_best = keep_best
        self.metric, direction, _ = KEEP_BEST[keep_best]
        self.maximise = direction == "max"
        self.step: int | None = None
        self.value: float | None = None
        self.measured: tuple[int, float] | None = None  # the latest (step, value) offered

    def offer(self, step: int, value: float) -> bool:
        """A value measured at `step`; True when it is a new best (checkpoint this step)."""
        value = float(value)
        if not math.isfinite(value):
            return False
        self.measured = (step, value)
        better = self.value is None or (value > self.value if self.maximise
                                        else value < self.value)
        if better:
            self.step, self.value = step, value
        return better

    def score_at(self, step: int) -> float | None:
        """The value measured at `step` (None when that step was not measured)."""
        return self.measured[1] if self.measured and self.measured[0] == step else None

    def mark(self) -> dict:
        return {"step": self.step, "keep_best": self.keep_best, "metric": self.metric,
                "value": self.value}

    def state_dict(self) -> dict:
        return {"keep_best": self.keep_best, "step": self.step, "value": self.value}

    def load_state_dict(self, state: dict | None) -> None:
        # a checkpoint from before keep_best (or from another keep_best) starts over
        if state and state.get("keep_best") == self.keep_best:
            self.step, self.value = state["step"], state["value"]


def save_checkpoint(state: dict, run_dir: Path, step: int,
                    best: BestTracker | None = None) -> CheckpointInfo:
    """Write `state` for `step` atomically (the pair, then the folder, fsynced); with
    `best`, its score goes in the sidecar and its mark in best.json. Never prunes (the
    supervisor does, runner/checkpoints.py `prune_plan`)."""
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
        if best is not None:
            meta.update(metric=best.metric, score=best.score_at(step))
        _write_atomic(path.with_suffix(".json"), json.dumps(meta).encode())
        if best is not None and best.step is not None:
            _write_atomic(best_checkpoint_file(run_dir), json.dumps(best.mark()).encode())
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
