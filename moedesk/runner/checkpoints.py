"""Checkpoint files without torch: listing, sidecar metadata, checksum verification.

The runner and CLI use this to find and verify checkpoints before launching a resume
(they may not import torch); `moedesk.train.checkpoint` writes and loads them. Like
`protocol.py`, it is a contract between trainer and runner; the folder's name lives in
`moedesk.paths`.

Which checkpoint a command means: `RUN`, `RUN@STEP` or `RUN@best` (`split_ref`), and
`resolve_checkpoint(run_dir, at)` for that `at` (None = the newest, a step, or "best":
the one `checkpoints/best.json` marks, which the trainer writes under `[checkpoint]
keep_best`). `resume --at`, `run --from`, `sample`, `route` (and export) all go through
these two functions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from moedesk.paths import best_checkpoint_file, checkpoint_dir

BEST = "best"


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


def parse_at(text: str | None, what: str = "the step") -> int | str | None:
    """"" or None -> None (the newest), "best" -> BEST, "120" -> 120; else CheckpointError."""
    if text is None or text == "":
        return None
    text = str(text).strip()
    if text.lower() == BEST:
        return BEST
    if text.isascii() and text.isdigit():  # '²'.isdigit() is True, int('²') a ValueError
        return int(text)
    raise CheckpointError(f"{what}: got {text!r}; use a step number or 'best'")


def split_ref(ref: str) -> tuple[str, int | str | None]:
    """"RUN", "RUN@STEP" or "RUN@best" -> (RUN, at) for `resolve_checkpoint`."""
    run, sep, at = str(ref).partition("@")
    if not run:
        raise CheckpointError(f"{ref!r}: name a run before the @ (RUN, RUN@STEP or RUN@best)")
    if sep and not at:
        raise CheckpointError(f"{ref!r}: put a step number or 'best' after the @")
    return run, parse_at(at, f"{ref!r}: after the @")


def read_best(run_dir: Path) -> dict | None:
    """The keep-best mark {step, keep_best, metric, value} of a run, or None."""
    try:
        mark = json.loads(best_checkpoint_file(run_dir).read_text())
        int(mark["step"])
        return mark
    except (OSError, ValueError, KeyError, TypeError):
        return None


def best_checkpoint(run_dir: Path) -> CheckpointInfo:
    """The checkpoint `best.json` marks; CheckpointError saying why when there is none."""
    mark = read_best(run_dir)
    if mark is None:
        raise CheckpointError(f"no best checkpoint in {checkpoint_dir(run_dir)}: the run does "
                              "not keep one; set [checkpoint] keep_best (\"val/loss\" for "
                              "dense and topk, \"ff/accuracy\" or \"seed000_score\" for "
                              "ternary) in its profile")
    found = [c for c in list_checkpoints(run_dir) if c.step == int(mark["step"])]
    if not found:
        raise CheckpointError(f"the best checkpoint (step {mark['step']}, {mark.get('metric')} "
                              f"= {mark.get('value')}) is missing from {checkpoint_dir(run_dir)}")
    return found[0]


def resolve_checkpoint(run_dir: Path, at: int | str | None = None,
                       at_most: int | None = None) -> CheckpointInfo:
    """The checkpoint `at` names (see `parse_at`): "best", a step, or None for the newest
    (at or before `at_most` when given, as `find_checkpoint` explains)."""
    if at == BEST:
        return best_checkpoint(run_dir)
    if isinstance(at, str):
        at = parse_at(at)
        if at == BEST:
            return best_checkpoint(run_dir)
    return find_checkpoint(run_dir, at, at_most)


def checkpoint_step(path: Path) -> int | None:
    """The step in a `step_XXXXXXXX.*` name, or None."""
    stem = path.name.split(".", 1)[0]
    if stem.startswith("step_") and stem[5:].isascii() and stem[5:].isdigit():
        return int(stem[5:])
    return None


def remove_partial_files(run_dir: Path) -> list[Path]:
    """Remove the temporary files a trainer killed mid-write leaves (`*.pt.tmp`,
    `*.json.tmp`). Only while no trainer of the run is alive (the supervisor's start)."""
    removed = []
    for path in checkpoint_dir(run_dir).glob("step_*.tmp"):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            continue
    return removed


def delete_checkpoint(path: Path) -> None:
    """Sidecar first: a pair cut short by a crash is then simply not listed."""
    Path(path).with_suffix(".json").unlink(missing_ok=True)
    Path(path).unlink(missing_ok=True)


def prune_plan(run_dir: Path, listed: list[tuple[int, str]], keep: int) -> list[int]:
    """The steps to prune when `listed` (step, path) are the checkpoints the store holds
    (committed, oldest first) and `checkpoint.keep` is `keep` (0 = keep all): every listed
    one but the newest `keep`, and any file on disk older than the oldest one kept. Files
    newer than the newest listed one are never touched: their rows are not committed yet,
    and they may be what a resume needs. The checkpoint `best.json` marks (`[checkpoint]
    keep_best`) is never pruned."""
    if keep <= 0 or not listed:
        return []
    kept = listed[-keep:]
    drop = {step for step, _ in listed[:-keep]}
    oldest_kept = kept[0][0]
    for path in checkpoint_dir(run_dir).glob("step_*.pt"):
        step = checkpoint_step(path)
        if step is not None and step < oldest_kept:
            drop.add(step)
    mark = read_best(run_dir)
    if mark is not None:
        drop.discard(int(mark["step"]))
    return sorted(drop)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"
