"""Where moedesk keeps things: the data home, the database, each run's folder and its files.

The data home is `./runs` unless `--home` or `MOEDESK_HOME` says otherwise. This is the one
place that spells a file name inside a run's folder (`RUN_DIR = HOME/RUN_ID`):

- `config.json`: the resolved profile, written by the supervisor, read by the trainer;
- `train.log`: the trainer's stderr and the supervisor's notes, tailed by the TUI;
- `supervisor.log`: the detached supervisor's own output (launch.py);
- `stop_request.json`: a requested stop, written before any signal (runner/control.py);
- `tokenizer.json`: the BPE tokenizer of a run on prepared token data, copied from the
  data folder when training starts (moedesk/data/tokenizer.py);
- `init_from.json`: the checkpoint `moedesk run --init-from` starts the weights from
  (moedesk/train/init_from.py);
- `checkpoints/`: `step_XXXXXXXX.pt` and its `.json` sidecar, and `best.json`, the
  `[checkpoint] keep_best` mark (runner/checkpoints.py).
"""

from __future__ import annotations

import os
from pathlib import Path

DB_NAME = "moedesk.db"
CONFIG_FILE = "config.json"
TRAIN_LOG = "train.log"
SUPERVISOR_LOG = "supervisor.log"
STOP_REQUEST_FILE = "stop_request.json"
CHECKPOINTS_DIR = "checkpoints"
BEST_CHECKPOINT_FILE = "best.json"
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


def tokenizer_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / TOKENIZER_FILE


def init_from_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / INIT_FROM_FILE


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def best_checkpoint_file(run_dir: str | Path) -> Path:
    return checkpoint_dir(run_dir) / BEST_CHECKPOINT_FILE


def profiles_dir() -> Path:
    """The profiles/ folder: ./profiles when present, else the one shipped beside the package."""
    local = Path.cwd() / "profiles"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parent.parent / "profiles"
