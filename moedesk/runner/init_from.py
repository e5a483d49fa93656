"""`moedesk run PROFILE --init-from RUN[@STEP|@best]`: a new run whose weights start from
another run's checkpoint (torch-free; the weights themselves are mapped by
moedesk/train/init_from.py in the trainer).

The checkpoint is resolved and verified like every other reference (`split_ref` and
`resolve_checkpoint`, through `launch.checkpoint_of`); the new run records the source run
and step as its parent (`parent_id`, `parent_step`) and gets `RUN_DIR/init_from.json`
{checkpoint, sha256, run_id, run_name, step, kind} before its supervisor starts. Unlike
`--from` (a fork: the same kind, the whole training state) nothing but the weights is
taken, and a dense run may start a topk profile (upcycling).
"""

from __future__ import annotations

import json
from pathlib import Path

from moedesk.paths import init_from_file
from moedesk.profiles import Profile
from moedesk.profiles.schema import LM_KINDS
from moedesk.runner.checkpoints import CheckpointInfo
from moedesk.runner.launch import RunError, checkpoint_of
from moedesk.store.reads import RunInfo


def resolve_init(profile: Profile, home: Path, source: str) -> tuple[RunInfo, CheckpointInfo]:
    """The source run and its verified checkpoint; RunError when the kinds cannot pair."""
    if profile.kind not in LM_KINDS:
        raise RunError(f"--init-from: the profile is a {profile.kind} run; only dense and topk "
                       "models start from another run's weights")
    info, ckpt = checkpoint_of(home, source, LM_KINDS, "--init-from")
    if (info.kind, profile.kind) not in (("dense", "dense"), ("topk", "topk"),
                                         ("dense", "topk")):
        raise RunError(f"--init-from {source!r}: run {info.id} is a {info.kind} run and the "
                       f"profile {profile.kind}; allowed: dense -> dense, topk -> topk, "
                       "dense -> topk (upcycling)")
    return info, ckpt


def write_init_request(run_dir: Path, info: RunInfo, ckpt: CheckpointInfo) -> None:
    path = init_from_file(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"checkpoint": str(ckpt.path), "sha256": ckpt.sha256,
                                "run_id": info.id, "run_name": info.name, "step": ckpt.step,
                                "kind": info.kind}, indent=2))
