"""A node other than node 0 of a multi-node run (docs/distributed.md).

`moedesk run PROFILE --nnodes N --node-rank R --rdzv-endpoint HOST:PORT` with R > 0 comes
here. Node 0 owns the run: its row in node 0's store, every event, every checkpoint.
This node's supervisor only runs its own ranks: `python -m moedesk.runner.node --dir DIR
--node-rank R` starts torchrun's agent for this node (the command of
`torchrun.trainer_command`) in its own process group, sends the ranks' output to
`DIR/train.log`, passes a SIGTERM on to the agent (the ranks then stop with everyone else
at the same step), and when the agent ends writes `DIR/exit.json` (exit code, status, the
failing rank if torchrun named one) and exits with the agent's exit code. That exit
status is all it forwards: no events (ranks on this node are never rank 0, so they send
none), no rows, no checkpoints. `start_node` creates `DIR` (`HOME/nodes/NAME-nodeR-STAMP`)
and spawns the supervisor detached, like `launch.start_run`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from moedesk.paths import config_file, node_exit_file, nodes_dir, supervisor_log, train_log
from moedesk.profiles import Profile, profile_from_dict, profile_to_dict
from moedesk.runner import torchrun
from moedesk.runner.control import signal_trainer


@dataclass
class NodeLaunched:
    folder: Path
    process: subprocess.Popen


def start_node(profile: Profile, home: Path, node_rank: int) -> NodeLaunched:
    """Write the node's folder and spawn its supervisor (detached from the terminal)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = nodes_dir(home) / f"{profile.name}-node{node_rank}-{stamp}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = nodes_dir(home) / f"{profile.name}-node{node_rank}-{stamp}-{suffix}"
    folder.mkdir(parents=True)
    config_file(folder).write_text(json.dumps(profile_to_dict(profile), indent=2))
    cmd = [sys.executable, "-m", "moedesk.runner.node", "--dir", str(folder),
           "--node-rank", str(node_rank)]
    with open(supervisor_log(folder), "a") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return NodeLaunched(folder, proc)


def read_exit(folder: Path) -> dict | None:
    try:
        return json.loads(node_exit_file(folder).read_text())
    except (OSError, ValueError):
        return None


def supervise_node(folder: Path, node_rank: int) -> int:
    profile = profile_from_dict(json.loads(config_file(folder).read_text()))
    cmd = torchrun.trainer_command(profile, folder, node_rank=node_rank)
    log_path = train_log(folder)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"--- moedesk node {node_rank} supervisor {os.getpid()}: {' '.join(cmd)}\n")
        log.flush()
        agent = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                 start_new_session=True,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1",
                                      **torchrun.launch_env(profile)})
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: signal_trainer(agent.pid, signal.SIGTERM))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    exit_code = agent.wait()
    text = torchrun.read_log_end(log_path)
    failure = torchrun.describe_failure(text) if exit_code else None
    if exit_code and failure is None and torchrun.agent_got_signal(text):
        exit_code = 0  # a stop passed on to the ranks, which all ended cleanly
    status = "ok" if exit_code == 0 else (failure[0] if failure else "failed")
    error = failure[1] if failure else (None if exit_code == 0 else
                                        f"torchrun exited with code {exit_code}")
    record = {"node_rank": node_rank, "exit_code": exit_code, "status": status, "error": error,
              "time": time.time()}
    tmp = node_exit_file(folder).with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, node_exit_file(folder))
    return exit_code if 0 <= exit_code < 256 else 128 + (-exit_code % 128)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moedesk-node")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--node-rank", required=True, type=int)
    args = parser.parse_args(argv)
    return supervise_node(args.dir, args.node_rank)


if __name__ == "__main__":
    sys.exit(main())
