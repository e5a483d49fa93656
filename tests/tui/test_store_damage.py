"""The TUI on a damaged store says so instead of "no runs yet", and records crashes."""

from __future__ import annotations

import os
import sqlite3

from moedesk.tui.poller import Poller
from tests.tui.conftest import make_app, screen_text, until


async def test_a_damaged_store_is_named_not_shown_as_empty(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "moedesk.db").write_bytes(os.urandom(32 * 1024))
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "is damaged" in screen_text(app).replace("\n", " "),
                    what="the damage to be shown")
        assert "no runs yet" not in screen_text(app)


def test_the_poller_records_a_dead_supervisor_in_sql(canned):
    conn = sqlite3.connect(canned.path / "moedesk.db")
    before = conn.execute("SELECT status FROM runs WHERE id = ?", (canned.crashed,)).fetchone()
    assert before == ("running",)  # the fixture's dead supervisor, never recorded
    poller = Poller(canned.path)
    poller.poll()
    status, error = conn.execute("SELECT status, error FROM runs WHERE id = ?",
                                 (canned.crashed,)).fetchone()
    assert status == "crashed" and "supervisor (pid 999995) is gone" in error
    assert [r.status for r in poller.runs if r.id == canned.crashed] == ["crashed"]
    poller.close()
    conn.close()
