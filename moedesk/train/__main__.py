"""Trainer entry point: `python -m moedesk.train RUN_DIR [--resume CKPT] [--stop-at STEP]`.

RUN_DIR/config.json holds the resolved profile (`profile_to_dict` output). The kind picks
the loop: dense and topk -> `loop.train_lm`, ternary -> `ternary.loop.train_ternary`
(same signature). Exit code 0 for completed or stopped, 1 for failed, 2 for bad usage.
An unexpected exception still ends with a `finished` event, so the supervisor can tell
a failed run from a crashed one.

Under torchrun (`WORLD_SIZE` > 1) every rank runs this module: it joins the process group
(`DistContext.from_env`), only rank 0 sends events (the others' stdout stays silent), and
every rank's log lines start with `[rank R]` so the supervisor can quote the failing
rank's last lines. A rank that loses the others (a peer died, a collective timed out)
sends no `finished` event and exits with `LOST_PEERS_EXIT`: the run's outcome then comes
from torchrun's failure report (runner/torchrun.py), which names the rank that failed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from moedesk.paths import config_file
from moedesk.profiles import profile_from_dict
from moedesk.runner.torchrun import LOST_PEERS_EXIT, RANK_PREFIX
from moedesk.train.emit import Emitter
from moedesk.train.stopflag import StopFlag


class _StepTrackingEmitter(Emitter):
    """The stdout emitter, remembering the last step it reported (for crash reports).
    With several ranks its log lines carry the rank, and only rank 0 sends events."""

    last_step = 0
    finished = False
    prefix = ""
    sends_events = True

    def for_rank(self, rank: int, world: int) -> None:
        if world > 1:
            self.prefix = RANK_PREFIX.format(rank)
            self.sends_events = rank == 0

    def emit(self, type: str, **fields: Any) -> None:
        if isinstance(fields.get("step"), int):
            self.last_step = fields["step"]
        self.finished = self.finished or type == "finished"
        if self.sends_events:
            super().emit(type, **fields)

    def log(self, message: str) -> None:
        if self.prefix:
            message = "\n".join(self.prefix + line for line in message.splitlines())
        super().log(message)


def _trainer(kind: str):
    if kind == "ternary":
        from moedesk.train.ternary.loop import train_ternary
        return train_ternary
    from moedesk.train.loop import train_lm
    return train_lm


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    # the run has ended with its own status: a late SIGTERM (the supervisor passes a stop
    # request on as well as `moedesk stop`) must not turn that exit into a kill
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return code


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moedesk.train",
                                     description="Run one training job; events go to stdout.")
    parser.add_argument("run_dir", type=Path, help="run folder holding config.json")
    parser.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="stop (with a checkpoint) after this step; the schedule still "
                             "spans train.steps")
    args = parser.parse_args(argv)

    emitter = _StepTrackingEmitter()
    try:
        profile = profile_from_dict(json.loads(config_file(args.run_dir).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = f"cannot read {config_file(args.run_dir)}: {exc}"
        emitter.log(reason)
        emitter.emit("finished", step=0, status="failed", reason=reason)
        return 2

    with StopFlag() as stop:
        from moedesk.train.distributed import DistContext, DistStartError, torchrun_env
        from moedesk.train.system import keep_freed_memory
        keep_freed_memory()  # before the model's first allocation
        if profile.kind == "ternary":  # one process only (profiles/rules.py says so too)
            if torchrun_env() is not None:
                reason = "the ternary kind trains in one process; use train.nproc_per_node = 1"
                emitter.log(reason)
                emitter.emit("finished", step=0, status="failed", reason=reason)
                return 1
            return _run(profile, args, emitter, stop, None)
        try:
            dist = DistContext.from_env(profile)
        except DistStartError as exc:
            emitter.log(str(exc))
            emitter.emit("finished", step=0, status="failed", reason=str(exc))
            return 1
        emitter.for_rank(dist.rank, dist.world)
        try:
            return _run(profile, args, emitter, stop, dist)
        finally:
            dist.close()


def _run(profile, args, emitter: _StepTrackingEmitter, stop: StopFlag, dist) -> int:
    extra = {} if dist is None else {"dist": dist}
    try:
        status = _trainer(profile.kind)(profile, args.run_dir, emitter, resume=args.resume,
                                        stop_at=args.stop_at, stop=stop, **extra)
    except Exception as exc:  # noqa: BLE001 - any crash must still end with an event
        if dist is not None and dist.enabled and _lost_peers(exc):
            emitter.log(f"lost contact with the other ranks at step {emitter.last_step}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return LOST_PEERS_EXIT
        emitter.log(traceback.format_exc().rstrip())
        if not emitter.finished:
            emitter.emit("finished", step=emitter.last_step, status="failed",
                         reason=f"{type(exc).__name__}: {exc}")
        return 1
    return 1 if status == "failed" else 0


# what gloo's and NCCL's errors say when the other side of a collective is gone or stuck
# (gloo raises plain RuntimeErrors)
_LOST_PEER_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting",
                      "Broken pipe", "remote worker", "communicator was aborted", "Watchdog")


def _lost_peers(exc: BaseException) -> bool:
    """A collective failed because another rank is gone or too slow (not this rank's bug)."""
    import torch.distributed

    if isinstance(exc, torch.distributed.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _LOST_PEER_MARKERS)


if __name__ == "__main__":
    sys.exit(main())
