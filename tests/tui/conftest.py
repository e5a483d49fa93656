"""TUI test helpers: the canned data home, an app on it, and waiting without sleeps."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from moedesk.tui.app import MoedeskApp
from tests.conftest import PROFILES
from tests.tui.fixtures import FIXED_NOW, Home, build_home


@pytest.fixture
def canned(tmp_path: Path) -> Home:
    path = tmp_path / "home"
    path.mkdir()
    return build_home(path)


@pytest.fixture
def profiles_dir(tmp_path: Path) -> Path:
    """A private copy of the shipped tiny profiles (tests may edit them)."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    for name in ("tiny_dense.toml", "tiny_topk.toml"):
        shutil.copy(PROFILES / name, folder / name)
    return folder


def make_app(home: Path, profiles: Path | None = None, fixed_clock: bool = True) -> MoedeskApp:
    return MoedeskApp(home, profiles=profiles or PROFILES,
                      clock=(lambda: FIXED_NOW) if fixed_clock else time.time,
                      poll_interval=0.05)


async def until(pilot, predicate: Callable[[], object], timeout: float = 30.0,
                what: str = "condition"):
    """Let the app run until `predicate()` is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def loaded(pilot) -> None:
    """Wait until the poller delivered the runs list at least once."""
    await until(pilot, lambda: pilot.app.refreshes > 0, what="the first runs refresh")


def screen_text(app) -> str:
    """The screen as plain text, line by line (what a user would read)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)
