"""Shared fixtures: an isolated data home, the repo's profiles folder, CLI helpers."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


# shipped profiles on prepared data (docs/data.md): the folder they name is made by a
# documented `moedesk data prepare` command, not shipped
PREPARED = {"pydoc_top2.toml": ("pydoc", 2048)}


@pytest.fixture(scope="session")
def shipped_overrides(tmp_path_factory):
    """overrides(path): the `--set` values a shipped profile needs on this machine: for a
    profile on prepared data, a folder prepared once per session (about 3 s); else none."""
    made: dict[str, dict] = {}

    def overrides(path) -> dict:
        name = Path(path).name
        if name not in PREPARED:
            return {}
        if name not in made:
            from moedesk.data.prepare import prepare

            builtin, vocab = PREPARED[name]
            folder = tmp_path_factory.mktemp("prepared") / builtin
            prepare([], folder, vocab, builtin=builtin)
            made[name] = {"data.path": str(folder)}
        return made[name]

    return overrides


def moedesk(*args: str, home: Path | None = None, timeout: float = 300,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run the real `moedesk` CLI in a subprocess (the installed console script's module)."""
    cmd = [sys.executable, "-m", "moedesk", *args]
    if home is not None:
        cmd += ["--home", str(home)]
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"moedesk {' '.join(args)} -> {result.returncode}\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def wait_for(predicate, timeout: float = 120, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# ---- the fast tier: `pytest -m "not slow"` (docs/testing.md) --------------------------------
# Everything under tests/integration is slow. Elsewhere a test that starts a process must
# carry @pytest.mark.slow: the guard below fails an unmarked one the moment it tries, so
# the fast tier stays fast without anyone timing it.

INTEGRATION = Path(__file__).resolve().parent / "integration"
TUI = Path(__file__).resolve().parent / "tui"


def _runs_the_app(item) -> bool:
    """A TUI test that drives the real app (Pilot: every async test there), compares
    snapshots, or uses tmux: seconds each, so slow."""
    fixtures = getattr(item, "fixturenames", ())
    return (inspect.iscoroutinefunction(getattr(item, "function", None))
            or "snap_compare" in fixtures or Path(str(item.fspath)).name == "test_tmux.py")


# the longest tests (`pytest --durations=20` on 2 idle cores: 20-80 s each) start first,
# then the rest of the slow tier, then the fast one: with pytest-xdist's workers taking
# tests in this order, no 80 s test starts last and keeps one worker busy alone
LONGEST = ("test_random_sigkills", "test_compiled_loss_curve", "test_the_view_samples_a_run",
           "test_eight_runs_and_a_polling_reader", "test_a_frozen_attach_supervisor",
           "test_a_frozen_supervisor_is_unresponsive", "test_collapsing_router_fires",
           "test_a_store_unwritable_past_the_limit", "test_a_killed_rank_ends_every_rank",
           "test_expert_parallel_equals_one_process", "test_samples_best_checkpoint")


def _start_order(item) -> int:
    if any(name in item.name for name in LONGEST):
        return 0
    return 1 if item.get_closest_marker("slow") is not None else 2


def pytest_collection_modifyitems(config, items):
    for item in items:
        where = Path(str(item.fspath)).resolve().parents
        if INTEGRATION in where or (TUI in where and _runs_the_app(item)):
            item.add_marker(pytest.mark.slow)
    items.sort(key=_start_order)  # stable: file order within each group


class UnmarkedProcess(AssertionError):
    """A test outside the slow tier started a process."""


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_process(request, monkeypatch):
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    real = subprocess.Popen.__init__

    def refuse(self, *args, **kwargs):
        raise UnmarkedProcess(f"{request.node.nodeid} starts a process ({args[0] if args else ''!r}):"
                              " mark it @pytest.mark.slow or move it to tests/integration")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    yield
    monkeypatch.setattr(subprocess.Popen, "__init__", real)
