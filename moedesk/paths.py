"""Where moedesk keeps things: the data home, the database, each run's folder.

The data home is `./runs` unless `--home` or `MOEDESK_HOME` says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

DB_NAME = "moedesk.db"


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


def profiles_dir() -> Path:
    """The profiles/ folder: ./profiles when present, else the one shipped beside the package."""
    local = Path.cwd() / "profiles"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parent.parent / "profiles"
