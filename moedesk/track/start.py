"""`moedesk.init`: create an external run (or join the watched one) and return its `Run`.

Inside a process started by `moedesk watch` (the MOEDESK_EVENTS variable is set,
runner/attach.py) init joins that run: it appends its `started` event to the run's
events file and the watch supervisor takes it from there. Elsewhere it starts a
detached supervisor (`python -m moedesk.runner.external attach`), hands it the `started`
event on stdin and waits for the run's id, name and folder (about half a second; the
supervisor creates the row, the training process never opens the database).

Bad arguments raise at once, naming the argument and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from moedesk.health.thresholds import STOP_ON
from moedesk.paths import data_home
from moedesk.runner import attach as contract
from moedesk.track.channel import EventWriter
from moedesk.track.run import Run, TrackError

MOE_KEYS = {"num_experts": 1, "top_k": 1, "warmup_steps": 0}  # key -> smallest value
# where a config says its MoE shape (moedesk's own names, then transformers' names)
CONFIG_SHAPE = {"num_experts": ("num_experts", "num_local_experts", "n_routed_experts"),
                "top_k": ("top_k", "num_experts_per_tok", "moe_top_k")}


def _plain_config(config) -> dict:
    """A JSON object from a dict, dataclass, argparse Namespace or `to_dict()` object."""
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    elif hasattr(config, "to_dict"):
        config = config.to_dict()
    elif not isinstance(config, Mapping) and hasattr(config, "__dict__"):
        config = vars(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"init: config must be a dict (or a dataclass, Namespace, to_dict() "
                        f"object), got {type(config).__name__}")
    # anything JSON cannot hold is kept as its str(): a config never fails a run
    return json.loads(json.dumps(dict(config), default=str))


def _moe_hints(moe) -> dict:
    if moe is None:
        return {}
    if not isinstance(moe, Mapping):
        raise TypeError(f"init: moe must be a dict, got {type(moe).__name__}")
    allowed = [*MOE_KEYS, "balanced"]
    out = {}
    for key, value in moe.items():
        if key not in allowed:
            raise ValueError(f"init: moe.{key} is unknown; allowed keys: {', '.join(allowed)}")
        if key == "balanced":
            if not isinstance(value, bool):
                raise ValueError(f"init: moe.balanced got {value!r}; must be true or false")
        elif isinstance(value, bool) or not isinstance(value, int) or value < MOE_KEYS[key]:
            raise ValueError(f"init: moe.{key} got {value!r}; must be an integer >= "
                             f"{MOE_KEYS[key]}")
        out[key] = value
    if "num_experts" in out and "top_k" in out and out["top_k"] > out["num_experts"]:
        raise ValueError(f"init: moe.top_k={out['top_k']} is more than "
                         f"moe.num_experts={out['num_experts']}")
    return out


def _shape_from_config(config: dict) -> dict:
    """num_experts and top_k when the config states them (top level or under "moe")."""
    out = {}
    for section in (config, config.get("moe") if isinstance(config.get("moe"), dict) else {}):
        for key, names in CONFIG_SHAPE.items():
            for name in names:
                value = section.get(name)
                if key not in out and isinstance(value, int) and not isinstance(value, bool) \
                        and value >= 1:
                    out[key] = value
    if out.get("top_k", 0) > out.get("num_experts", 1 << 30):
        return {}
    return out


def _check_health(health) -> dict:
    if health is None:
        return {}
    if not isinstance(health, Mapping):
        raise TypeError(f"init: health must be a dict of rule -> thresholds, got "
                        f"{type(health).__name__}")
    from moedesk.profiles.rules import health_problems  # only when overrides are given

    problems = health_problems(dict(health))
    if problems:
        raise ValueError("init: " + "; ".join(f"{p.key}: {p.message}" for p in problems))
    return json.loads(json.dumps(dict(health)))


def program_name(argv: list[str] | None = None) -> str:
    """A short name for the training program: the script's stem, or the -m module."""
    argv = sys.argv if argv is None else argv
    first = argv[0] if argv else ""
    if not first or first in ("-c", "-"):
        return "python"
    path = Path(first)
    return path.parent.name if path.stem == "__main__" and path.parent.name else path.stem


def init(name: str | None = None, config=None, *, home: str | Path | None = None,
         tags: list[str] | tuple = (), total_steps: int | None = None, stop_on: str | None = None,
         health: dict | None = None, moe: dict | None = None, graceful_stop: bool = False,
         attach: bool = True) -> Run:
    """Start tracking this process as a moedesk run (docs/tracking.md).

    name: run name (default SCRIPT-ID); config: your hyperparameters (stored, shown by
    `moedesk show`); home: the data home (default $MOEDESK_HOME or ./runs); tags;
    total_steps: for progress and ETA; stop_on: the alert severity that stops the run
    (warning, critical, never; default critical); health: rule overrides as in a profile's
    [health.RULE] tables; moe: {num_experts, top_k, balanced, warmup_steps} when known up
    front (else the config's num_experts/top_k, num_local_experts/num_experts_per_tok, at
    its top or under "moe"; else learned from the first expert load); graceful_stop: your loop checks
    `run.should_stop` (SIGTERM then only sets it) instead of being sent SIGTERM;
    attach=False: a run of its own even under `moedesk watch`.
    """
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"init: name must be a non-empty string, got {name!r}")
    if isinstance(tags, str) or not all(isinstance(t, str) and t for t in tags):
        raise ValueError(f"init: tags must be a list of non-empty strings, got {tags!r}")
    if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                    or total_steps < 1):
        raise ValueError(f"init: total_steps must be an integer >= 1, got {total_steps!r}")
    if stop_on is not None and stop_on not in STOP_ON:
        raise ValueError(f"init: stop_on got {stop_on!r}; allowed values: {', '.join(STOP_ON)}")
    plain = _plain_config(config)
    moe_hints = {**_shape_from_config(plain), **_moe_hints(moe)}
    started = {"type": "started", "step": 0, "wall": time.time(), "pid": os.getpid(),
               "name": name, "config": plain, "tags": list(tags),
               "total_steps": total_steps, "stop_on": stop_on, "health": _check_health(health),
               "moe": moe_hints, "graceful_stop": bool(graceful_stop), "program": program_name()}
    top_k = moe_hints.get("top_k")
    events = os.environ.get(contract.ENV_EVENTS)
    if attach and events:
        writer = EventWriter(events)
        writer.write(started)
        writer.close()
        run_id = int(os.environ.get(contract.ENV_RUN_ID) or 0)
        return Run(run_id=run_id, name=name or os.environ.get(contract.ENV_RUN_NAME) or str(run_id),
                   run_dir=os.environ.get(contract.ENV_RUN_DIR) or Path(events).parent,
                   events=events, top_k=top_k, graceful_stop=graceful_stop)
    proc, answer = _start_supervisor(data_home(home), started)
    return Run(run_id=answer["run_id"], name=answer["name"], run_dir=answer["run_dir"],
               events=answer["events"], supervisor=proc, top_k=top_k,
               graceful_stop=graceful_stop)


def _start_supervisor(home: Path, started: dict) -> tuple[subprocess.Popen, dict]:
    package_root = str(Path(__file__).resolve().parents[2])  # moedesk importable as we are
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": package_root + (os.pathsep + path if path else "")}
    for key in (contract.ENV_EVENTS, contract.ENV_RUN_ID, contract.ENV_RUN_DIR):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "moedesk.runner.external", "attach", "--home", str(home),
           "--pid", str(os.getpid())]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                            env=env)
    try:
        proc.stdin.write((json.dumps(started) + "\n").encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass
    line = _read_line(proc.stdout, contract.HANDSHAKE_TIMEOUT_S)
    proc.stdout.close()
    answer = None
    try:
        answer = json.loads(line) if line else None
    except ValueError:
        pass
    if not isinstance(answer, dict) or "run_id" not in answer:
        if isinstance(answer, dict) and answer.get("error"):
            message = answer["error"]
        elif not line:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
            tail = proc.stderr.read().decode(errors="replace").strip().splitlines()[-5:]
            message = "the moedesk supervisor did not answer" + (
                ": " + " | ".join(tail) if tail else f" within {contract.HANDSHAKE_TIMEOUT_S:.0f} s")
        else:
            message = f"the moedesk supervisor answered {line!r}"
        proc.stderr.close()
        raise TrackError(f"moedesk.init: {message}")
    proc.stderr.close()
    return proc, answer


def _read_line(stream, timeout: float) -> str:
    """One line from a pipe, or what came before EOF or the timeout."""
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")
