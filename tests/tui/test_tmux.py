"""The TUI in a real terminal (tmux, 120x40): launch a tiny top-k run from its profile,
watch the expert heatmap change, stop the run gracefully, and quit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from moedesk.paths import db_path
from moedesk.store import Reader
from tests.conftest import PROFILES, REPO
from tests.tui.realruns import kill_leftovers

pytestmark = pytest.mark.slow


class Tmux:
    def __init__(self, name: str):
        self.socket = f"moedesk-test-{os.getpid()}"
        self.name = name

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, check=check, timeout=30)

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-s", self.name, "-x", "120", "-y", "40", command)

    def screen(self) -> str:
        result = self.run("capture-pane", "-p", "-t", self.name, check=False)
        return result.stdout

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.name, *keys)

    def alive(self) -> bool:
        return self.run("has-session", "-t", self.name, check=False).returncode == 0

    def wait(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            found = re.search(pattern, text)
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not on screen after {timeout}s:\n{text}")

    def kill(self) -> None:
        self.run("kill-server", check=False)


def heatmap_rows(text: str) -> list[str]:
    return [line.split("▏")[-1].strip() for line in text.splitlines()
            if re.search(r"▏ L\d ", line)]


def test_launch_watch_heatmap_stop_and_quit_in_tmux(tmp_path):
    assert shutil.which("tmux"), "this test drives the TUI in tmux: install tmux"
    home, profiles = tmp_path / "home", tmp_path / "profiles"
    profiles.mkdir()
    text = (PROFILES / "tiny_topk.toml").read_text()
    # long enough that we stop it, not the clock; graceful stop still checkpoints
    (profiles / "tiny_topk.toml").write_text(re.sub(r"(?m)^steps = \d+", "steps = 5000", text))
    tmux = Tmux("moedesk")
    # COLUMNS/LINES from the test runner would override the terminal's real size
    command = (f"cd {REPO} && env -u COLUMNS -u LINES {sys.executable} -m moedesk.tui "
               f"--home {home} --profiles {profiles}")
    tmux.start(command)
    try:
        tmux.wait(r"no runs yet", timeout=30)
        tmux.keys("n")
        tmux.wait(r"tiny_topk\.toml\s+topk\s+5000 steps", timeout=30)
        tmux.keys("Enter")
        first = tmux.wait(r"layers × 4 experts · step (\d+)", timeout=120)
        rows_before = heatmap_rows(tmux.screen())
        assert len(rows_before) == 2  # two MoE layers, four experts each
        # the heatmap follows the run: a later step with different loads
        deadline = time.monotonic() + 60
        while True:
            screen = tmux.screen()
            step = re.search(r"layers × 4 experts · step (\d+)", screen)
            if step and int(step.group(1)) > int(first.group(1)) + 3 \
                    and heatmap_rows(screen) != rows_before:
                break
            assert time.monotonic() < deadline, f"heatmap did not change:\n{screen}"
            time.sleep(0.2)
        assert "share vs fair" in screen and "imbalance" in screen
        tmux.keys("s")
        tmux.wait(r"Stop run 1 \(tiny-topk-1\)\?", timeout=10)
        tmux.keys("y")
        tmux.wait(r"tiny-topk-1 · topk · stopped", timeout=60)
        tmux.keys("q")
        deadline = time.monotonic() + 15
        while tmux.alive():
            assert time.monotonic() < deadline, "the TUI did not quit"
            time.sleep(0.2)
    finally:
        tmux.kill()
        if db_path(home).exists():
            kill_leftovers(home)
    reader = Reader(db_path(home))
    try:
        run = reader.run(1)
        assert run.status == "stopped" and 0 < run.last_step < 5000
        assert [c["step"] for c in reader.checkpoints(1)] == [run.last_step]
    finally:
        reader.close()
