"""Helpers for the tests that drive real tiny runs from the TUI.

Each run is a real supervisor and trainer (torch) in their own sessions; the app only
reads the store. The profiles are shortened copies of the shipped tiny ones.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from moedesk.paths import db_path
from moedesk.profiles.edit import ProfileDocument, field_specs
from moedesk.store import Reader
from moedesk.tui.screens.monitor import MonitorScreen
from moedesk.tui.screens.profile_picker import ProfilePicker
from tests.tui.conftest import until

SPECS = {s.key: s for s in field_specs()}


def shorten(path: Path, **values: str) -> None:
    doc = ProfileDocument(path)
    for key, text in values.items():
        doc.set_raw(SPECS[key.replace("__", ".")], text)
    doc.save()


def status_of(home: Path, run_id: int) -> str:
    reader = Reader(db_path(home))
    try:
        return reader.run(run_id).status
    finally:
        reader.close()


async def launch_from_picker(pilot, name: str) -> MonitorScreen:
    await pilot.press("n")
    await until(pilot, lambda: isinstance(pilot.app.screen, ProfilePicker), what="picker")
    picker = pilot.app.screen
    await pilot.press(*["down"] * picker.paths.index(picker.folder / name), "enter")
    return await until(pilot, lambda: isinstance(pilot.app.screen, MonitorScreen)
                       and pilot.app.screen, what="the monitor of the new run")


def kill_leftovers(home: Path) -> None:
    reader = Reader(db_path(home))
    try:
        for run in reader.runs():
            for pid in (run.row["trainer_pid"], run.row["supervisor_pid"]):
                if pid and run.status in ("queued", "running"):
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
    finally:
        reader.close()


