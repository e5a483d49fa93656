"""`Run`: what a training process logs to its external run (made by `moedesk.init`).

Every call turns into one protocol event appended to the run's events file
(track/channel.py): nothing waits for the database, and what was logged survives a
crash of the process the moment the call returns. The run's supervisor stores it.

How a run ends: `finish(exit_code)` (0 or None: completed, else failed; stopped when a
stop was requested), the `with` block's end (an exception: failed, Ctrl-C: stopped), or
the interpreter's normal exit (atexit: completed, failed after an uncaught exception).
A process that dies without any of these (SIGKILL, os._exit, a segfault) ends `crashed`.
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from moedesk.paths import stop_request_file
from moedesk.runner.loadmetrics import LoadMetrics
from moedesk.runner.protocol import MetricsPacker
from moedesk.track.channel import EventWriter, fast_encode

LEVELS = ("info", "warning", "critical")
FINISH_WAIT_S = 60.0  # how long finish waits for the supervisor to store everything
PACKER_CACHE = 64  # sets of metric names whose packers (encoded names) a run keeps

_uncaught: list[BaseException] = []


def _install_excepthook() -> None:
    """Remember uncaught exceptions, so the atexit finish can say `failed`."""
    if getattr(sys.excepthook, "_moedesk", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        _uncaught.append(value)
        previous(kind, value, tb)

    hook._moedesk = True  # type: ignore[attr-defined]
    sys.excepthook = hook


class TrackError(RuntimeError):
    """The run cannot be created or used; the message says why."""


def _counts_row(layer, counts) -> list[int]:
    if hasattr(counts, "tolist"):  # torch tensor, numpy array
        counts = counts.detach().cpu().tolist() if hasattr(counts, "detach") else counts.tolist()
    try:
        row = list(counts)
    except TypeError:
        raise TypeError(f"log_expert_load: layer {layer!r}: counts must be a sequence of numbers, "
                        f"got {type(counts).__name__}") from None
    if set(map(type, row)) != {int}:  # one C-level pass: this runs for every layer
        try:
            row = [int(c) if float(c).is_integer() else math.nan for c in row]
        except (TypeError, ValueError):
            row = [math.nan]
        if any(isinstance(c, float) for c in row):
            raise ValueError(f"log_expert_load: layer {layer!r}: counts must be whole numbers "
                             "(how many (token, slot) assignments each expert got)")
    if not row:
        raise ValueError(f"log_expert_load: layer {layer!r} has no experts")
    if min(row) < 0:
        raise ValueError(f"log_expert_load: layer {layer!r} has a negative count")
    return row


class Run:
    """One external run; `moedesk.init` makes it. Attributes: id, name, run_dir, step."""

    def __init__(self, *, run_id: int, name: str, run_dir: str | Path, events: str | Path,
                 supervisor: subprocess.Popen | None = None, top_k: int | None = None,
                 graceful_stop: bool = False):
        self.id, self.name, self.run_dir = run_id, name, Path(run_dir)
        self.step = 0
        self._writer = EventWriter(events)
        self._packers: dict[tuple, MetricsPacker] = {}
        self._supervisor = supervisor
        self._top_k = top_k
        self._load_metrics = LoadMetrics()  # the moe/* statistics of the counts, as trainers do
        self._routers = None  # track.router.RouterSet, made by the first watch_router
        self._stop_path = str(stop_request_file(self.run_dir))
        self._signalled = False
        self._previous_sigterm = None
        self._pid = os.getpid()
        self.finished = False
        if graceful_stop:
            self._catch_sigterm()
        _install_excepthook()
        atexit.register(self._at_exit)

    def __repr__(self) -> str:
        return f"<moedesk.Run {self.id} {self.name!r} step {self.step}>"

    def _check_open(self) -> None:
        if self.finished:
            raise TrackError(f"run {self.id} ({self.name}) is finished; moedesk.init starts a new one")

    # ---- logging ---------------------------------------------------------------------------

    def log(self, values: Mapping[str, float], step: int | None = None) -> None:
        """Scalars at a step (default: one more than the last step used). Values are
        numbers or 0-d tensors (a tensor costs a device sync); NaN and inf are kept."""
        self._check_open()
        try:
            names = tuple(values)
            numbers = list(map(float, values.values()))
        except AttributeError:
            raise TypeError(f"log: values must be a dict of name -> number, got "
                            f"{type(values).__name__}") from None
        except (TypeError, ValueError):
            raise TypeError(self._bad_value(values)) from None
        packer = self._packers.get(names)
        if packer is None:  # a new set of names: check them once
            bad = [k for k in names if type(k) is not str or not k]
            if bad:
                raise TypeError(f"log: metric names must be non-empty strings, got {bad[0]!r}")
            packer = self._packer(names)
        step = self.step + 1 if step is None else self._valid_step(step, "log")
        self.step = step
        if self._routers is not None:
            self.log_router_load(step)
        self._writer.write_metrics(step, time.time(), packer, numbers)

    def _packer(self, names: tuple[str, ...]) -> MetricsPacker:
        packer = self._packers.get(names)
        if packer is None:
            if len(self._packers) >= PACKER_CACHE:
                self._packers.clear()
            packer = self._packers[names] = MetricsPacker(names)
        return packer

    @staticmethod
    def _bad_value(values: Mapping) -> str:
        for key, value in values.items():
            try:
                float(value)
            except (TypeError, ValueError):
                return f"log: {key!r} = {value!r} is not a number"
        return "log: values must be numbers"

    @staticmethod
    def _valid_step(step, what: str) -> int:
        if isinstance(step, bool) or not isinstance(step, int) and not hasattr(step, "__index__"):
            raise TypeError(f"{what}: step must be an integer, got {step!r}")
        step = int(step)
        if step < 0:
            raise ValueError(f"{what}: step must be >= 0, got {step}")
        return step

    def log_expert_load(self, loads, step: int | None = None, top_k: int | None = None) -> None:
        """Per-expert counts of each MoE layer: {layer: counts} or a [layers, experts]
        array; counts[i] = (token, slot) assignments expert i got over the step, so they
        sum to tokens x top_k. Default step: the last `log`'s. `top_k` is needed once
        (or in init's moe=) unless a watched router told it."""
        self._check_open()
        top_k = top_k if top_k is not None else self._top_k
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError("log_expert_load: pass top_k= (experts chosen per token, >= 1) "
                             "once, or moe={'top_k': k} to moedesk.init")
        if isinstance(loads, Mapping):
            items = list(loads.items())
        elif hasattr(loads, "tolist") or isinstance(loads, (list, tuple)):
            items = list(enumerate(loads.tolist() if hasattr(loads, "tolist") else loads))
        else:
            raise TypeError("log_expert_load: loads must be {layer: counts} or a "
                            f"[layers, experts] array, got {type(loads).__name__}")
        rows = {}
        for layer, counts in items:
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise TypeError(f"log_expert_load: layers are integers >= 0, got {layer!r}")
            row = _counts_row(layer, counts)
            if len(row) < top_k:
                raise ValueError(f"log_expert_load: layer {layer} has {len(row)} experts, "
                                 f"fewer than top_k={top_k}")
            rows[layer] = row
        if not rows:
            return
        self._top_k = top_k
        step = max(self.step, 1) if step is None else self._valid_step(step, "log_expert_load")
        self.step = max(self.step, step)
        # the moe/* statistics are computed here, where the counts are made, as moedesk's
        # own trainers do: the supervisor stores them as they come (`"stats": true`), and
        # the counts and their statistics are one append, so a crash keeps both or neither
        stats = self._load_metrics.values(rows, top_k)
        wall = time.time()
        counts_line = fast_encode({"type": "expert_load", "step": step, "wall": wall,
                                   "loads": rows, "top_k": top_k, "stats": True})
        stats_line = self._packer(tuple(stats)).line(step, wall, list(stats.values()))
        self._writer.write_line(counts_line + "\n" + stats_line)

    def alert(self, title: str, text: str = "", level: str = "warning") -> None:
        """An alert in the run's alerts table (and the TUI); it never stops the run."""
        self._check_open()
        if not isinstance(title, str) or not title.strip():
            raise ValueError("alert: title must be a non-empty string")
        if level not in LEVELS:
            raise ValueError(f"alert: level got {level!r}; allowed values: {', '.join(LEVELS)}")
        self._writer.write({"type": "alert", "step": self.step, "wall": time.time(),
                            "title": title, "text": str(text), "level": level})

    # ---- routers ---------------------------------------------------------------------------

    def watch_router(self, module, top_k: int | None = None, num_experts: int | None = None,
                     layer: int | None = None):
        """Count the top-k choices of a router module in training forwards (contract in
        docs/tracking.md); each `log` then sends the counts since the previous one.
        Returns the hook's handle (`.remove()`)."""
        self._check_open()
        from moedesk.track import router

        if self._routers is None:
            self._routers = router.RouterSet()
        counter = router.watch(self._routers, module, top_k=top_k, num_experts=num_experts,
                               layer=layer)
        self._top_k = self._top_k or counter.top_k
        return counter

    def log_router_load(self, step: int | None = None) -> dict[int, list[int]]:
        """Send what the watched routers counted since the last time (nothing if they saw
        no training forward); returns it, {layer: counts}."""
        if self._routers is None:
            return {}
        loads = self._routers.take()
        if loads:
            self.log_expert_load(loads, step=step, top_k=self._routers.top_k())
        return loads

    def unwatch_routers(self) -> None:
        """Remove every router hook of `watch_router`."""
        if self._routers is not None:
            self._routers.remove()
            self._routers = None

    def log_checkpoint(self, path: str | Path, step: int | None = None) -> None:
        """Record a checkpoint you saved (a file or a folder) in the run's checkpoints
        table, with its size; moedesk does not read it."""
        self._check_open()
        target = Path(path).resolve()
        if target.is_dir():
            size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        elif target.is_file():
            size = target.stat().st_size
        else:
            raise FileNotFoundError(f"log_checkpoint: no file or folder at {target}")
        step = self.step if step is None else self._valid_step(step, "log_checkpoint")
        self._writer.write({"type": "checkpoint", "step": step, "wall": time.time(),
                            "path": str(target), "size": size, "sha256": None})

    # ---- stopping and finishing -----------------------------------------------------------

    @property
    def should_stop(self) -> bool:
        """True once a stop was requested: `moedesk stop`, the TUI, a health rule at
        stop_on, or (with graceful_stop) a SIGTERM. Check it between steps."""
        return self._signalled or os.path.exists(self._stop_path)

    def _catch_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only; the stop file still works

        def handle(signum, frame):
            self._signalled = True

        self._previous_sigterm = signal.signal(signal.SIGTERM, handle)

    def finish(self, exit_code: int | None = None, *, status: str | None = None,
               reason: str | None = None, wait: float = FINISH_WAIT_S) -> None:
        """End the run: exit_code 0/None completed (stopped after a stop request), other
        codes failed. Waits (at most `wait` s) until the supervisor has stored it all."""
        if self.finished or os.getpid() != self._pid:
            return
        self.unwatch_routers()
        if status is None:
            if exit_code not in (None, 0):
                status, reason = "failed", reason or f"finished with exit code {exit_code}"
            elif self.should_stop:
                status, reason = "stopped", reason or "stopped on request"
            else:
                status = "completed"
        self._writer.write({"type": "finished", "step": self.step, "wall": time.time(),
                            "status": status, "reason": reason, "exit_code": exit_code})
        self._writer.close()
        self.finished = True
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        atexit.unregister(self._at_exit)
        if self._supervisor is not None:
            try:
                self._supervisor.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                print(f"moedesk: run {self.id}'s supervisor is still storing events; it "
                      "goes on in the background", file=sys.stderr)

    def _at_exit(self) -> None:
        if not _uncaught:
            self.finish()
        elif isinstance(_uncaught[-1], KeyboardInterrupt):
            self.finish(status="stopped", reason="interrupted (KeyboardInterrupt)")
        else:
            error = _uncaught[-1]
            self.finish(status="failed", reason=f"{type(error).__name__}: {error}")

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if kind is None:
            self.finish()
        elif issubclass(kind, KeyboardInterrupt):
            self.finish(status="stopped", reason="interrupted (KeyboardInterrupt)")
        else:
            self.finish(status="failed", reason=f"{kind.__name__}: {error}")
        return False
