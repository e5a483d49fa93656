"""Trainer entry point: `python -m moedesk.train RUN_DIR [--resume CKPT] [--stop-at STEP]`.

RUN_DIR/config.json holds the resolved profile (`profile_to_dict` output). The kind picks
the loop: dense and topk -> `loop.train_lm`, ternary -> `ternary.loop.train_ternary`
(same signature). Exit code 0 for completed or stopped, 1 for failed, 2 for bad usage.
An unexpected exception still ends with a `finished` event, so the supervisor can tell
a failed run from a crashed one.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from moedesk.paths import config_file
from moedesk.profiles import profile_from_dict
from moedesk.train.emit import Emitter
from moedesk.train.stopflag import StopFlag


class _StepTrackingEmitter(Emitter):
    """The stdout emitter, remembering the last step it reported (for crash reports)."""

    last_step = 0
    finished = False

    def emit(self, type: str, **fields: Any) -> None:
        if isinstance(fields.get("step"), int):
            self.last_step = fields["step"]
        self.finished = self.finished or type == "finished"
        super().emit(type, **fields)


def _trainer(kind: str):
    if kind == "ternary":
        from moedesk.train.ternary.loop import train_ternary
        return train_ternary
    from moedesk.train.loop import train_lm
    return train_lm


def main(argv: list[str] | None = None) -> int:
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
        try:
            status = _trainer(profile.kind)(profile, args.run_dir, emitter, resume=args.resume,
                                            stop_at=args.stop_at, stop=stop)
        except Exception as exc:  # noqa: BLE001 - any crash must still end with an event
            emitter.log(traceback.format_exc().rstrip())
            if not emitter.finished:
                emitter.emit("finished", step=emitter.last_step, status="failed",
                             reason=f"{type(exc).__name__}: {exc}")
            return 1
    return 1 if status == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
