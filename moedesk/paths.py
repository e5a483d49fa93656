"""Where moedesk keeps things: the data home, the database, each run's folder and its files.

The data home is `./runs` unless `--home` or `MOEDESK_HOME` says otherwise. This is the one
place that spells a file name inside a run's folder (`RUN_DIR = HOME/RUN_ID`):

- `config.json`: the resolved profile, written by the supervisor, read by the trainer;
- `train.log`: the trainer's stderr and the supervisor's notes, tailed by the TUI;
- `supervisor.log`: the detached supervisor's own output (launch.py);
- `stop_request.json`: a requested stop, written before any signal (runner/control.py);
- `stop_ack.json`: the supervisor's acknowledgement of that request (runner/control.py);
- `heartbeat`: touched by the live supervisor every few seconds (store/liveness.py);
- `spool.jsonl`: batches the supervisor could not commit, replayed later (store/spool.py);
- `events.jsonl`: an external run's protocol events, appended by the training process
  (moedesk/track/) and tailed by its supervisor (runner/external.py);
- `tokenizer.json`: the BPE tokenizer of a run on prepared token data, copied from the
  data folder when training starts (moedesk/data/tokenizer.py);
- `init_from.json`: the checkpoint `moedesk run --init-from` starts the weights from
  (moedesk/train/init_from.py);
- `checkpoints/`: `step_XXXXXXXX.pt` and its `.json` sidecar, and `best.json`, the
  `[checkpoint] keep_best` mark (runner/checkpoints.py).

A node other than node 0 of a multi-node run keeps no run folder and no database rows:
`HOME/nodes/NAME-nodeR-STAMP/` holds its `config.json`, `train.log`, `supervisor.log`
and `exit.json` (its ranks' exit, runner/node.py).
"""

from __future__ import annotations

import os
from pathlib import Path

DB_NAME = "moedesk.db"
CONFIG_FILE = "config.json"
TRAIN_LOG = "train.log"
SUPERVISOR_LOG = "supervisor.log"
STOP_REQUEST_FILE = "stop_request.json"
STOP_ACK_FILE = "stop_ack.json"
HEARTBEAT_FILE = "heartbeat"
SPOOL_FILE = "spool.jsonl"
EVENTS_FILE = "events.jsonl"
CHECKPOINTS_DIR = "checkpoints"
BEST_CHECKPOINT_FILE = "best.json"
NODES_DIR = "nodes"
NODE_EXIT_FILE = "exit.json"
TOKENIZER_FILE = "tokenizer.json"
INIT_FROM_FILE = "init_from.json"


def data_home(home: str | Path | None = None) -> Path:
    if home:
        return Path(home).expanduser().resolve()
    env = os.environ.get("MOEDESK_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return (Path.cwd() / "runs").resolve()


def db_path(home: Path) -> Path:
    return home / DB_NAME


def run_dir(home: Path, run_id: int) -> Path:
    return home / str(run_id)


def config_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / CONFIG_FILE


def train_log(run_dir: str | Path) -> Path:
    return Path(run_dir) / TRAIN_LOG


def supervisor_log(run_dir: str | Path) -> Path:
    return Path(run_dir) / SUPERVISOR_LOG


def stop_request_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / STOP_REQUEST_FILE


def stop_ack_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / STOP_ACK_FILE


def heartbeat_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / HEARTBEAT_FILE


def spool_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / SPOOL_FILE


def events_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / EVENTS_FILE


def tokenizer_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / TOKENIZER_FILE


def init_from_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / INIT_FROM_FILE


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def best_checkpoint_file(run_dir: str | Path) -> Path:
    return checkpoint_dir(run_dir) / BEST_CHECKPOINT_FILE


def nodes_dir(home: Path) -> Path:
    return home / NODES_DIR


def node_exit_file(node_dir: str | Path) -> Path:
    return Path(node_dir) / NODE_EXIT_FILE


def profiles_dir() -> Path:
    """The profiles/ folder: ./profiles when present, else the one shipped beside the package."""
    local = Path.cwd() / "profiles"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parent.parent / "profiles"
