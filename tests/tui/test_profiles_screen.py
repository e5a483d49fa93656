"""The profile editor: live validation with the CLI's messages, faithful saves, launch."""

from __future__ import annotations

import moedesk.tui.app as tui_app
from moedesk.runner.launch import Launched
from moedesk.tui.screens.monitor import MonitorScreen
from moedesk.tui.screens.profiles import ProfilesScreen
from moedesk.tui.widgets.profile_table import ProfileTable
from tests.tui.conftest import loaded, make_app, screen_text, until


async def edit_key(pilot, key: str, text: str) -> None:
    """Put the cursor on `key`, open it, replace its value with `text` (not committed)."""
    table = pilot.app.screen.query_one(ProfileTable)
    table.move_cursor(row=[s.key for s in table.order].index(key))
    await pilot.press("enter")
    box = pilot.app.screen.query_one("#edit-value")
    await pilot.press(*["backspace"] * len(box.value), *text)


async def test_edit_validate_save_and_launch(canned, profiles_dir, monkeypatch):
    launched = []

    def fake_start(profile, home, **kw):
        launched.append((profile, home))
        return Launched(canned.dense, "dense-a", 0)

    monkeypatch.setattr(tui_app, "start_run", fake_start)
    path = profiles_dir / "tiny_dense.toml"
    original = path.read_text()
    app = make_app(canned.path, profiles_dir)
    async with app.run_test(size=(110, 34)) as pilot:
        await loaded(pilot)
        await pilot.press("p")
        screen = await until(pilot, lambda: isinstance(app.screen, ProfilesScreen)
                             and app.screen.doc is not None and app.screen)
        text = screen_text(app)
        assert "tiny_dense.toml" in text and "tiny_topk.toml" in text
        assert "model.dim" in text and "valid" in text

        # an invalid value: flagged on its row and listed as the CLI prints it
        await edit_key(pilot, "model.dim", "0")
        assert screen.problems == {"model.dim": "got 0; must be >= 8 and <= 16384"}
        assert screen.problem_lines == [f"{path}: model.dim: got 0; must be >= 8 and <= 16384"]
        text = screen_text(app)
        assert "1 problem(s)" in text and "as `moedesk run` reports them:" in text
        await pilot.press("ctrl+s")
        assert path.read_text() == original  # an invalid profile is never written
        await pilot.press("escape")  # leaves the edit line, restoring 64
        assert screen.problems == {} and not screen.doc.dirty

        # a cross-field problem names the key the CLI names
        await edit_key(pilot, "train.warmup_steps", "500")
        assert "train.warmup_steps" in screen.problems
        await pilot.press("escape")

        await edit_key(pilot, "train.steps", "40")
        await pilot.press("enter")
        assert screen.doc.edits == {"train.steps": "40"}
        await pilot.press("ctrl+s")
        saved = path.read_text()
        assert saved == original.replace("steps = 150", "steps = 40")

        await edit_key(pilot, "train.lr", "1e-3")
        await pilot.press("enter", "ctrl+l")  # saves, then launches the edited profile
        await until(pilot, lambda: launched, what="the launch")
        profile, home = launched[0]
        assert (profile.train.steps, profile.train.lr, home) == (40, 1e-3, canned.path)
        assert "lr = 1e-3" in path.read_text()
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor")


async def test_switching_profiles_keeps_unsaved_edits_safe(canned, profiles_dir):
    app = make_app(canned.path, profiles_dir)
    async with app.run_test(size=(110, 34)) as pilot:
        await loaded(pilot)
        await pilot.press("p")
        screen = await until(pilot, lambda: isinstance(app.screen, ProfilesScreen)
                             and app.screen.doc is not None and app.screen)
        await edit_key(pilot, "seed", "7")
        await pilot.press("enter")
        screen.set_focus(screen.query_one("#profile-list"))
        await pilot.press("down", "enter")  # tiny_topk.toml, with an edit pending
        assert screen.doc.path.name == "tiny_dense.toml"
        assert any("Unsaved edits" in n.message for n in app._notifications)
        await pilot.press("ctrl+z")  # revert
        assert not screen.doc.dirty
        screen.set_focus(screen.query_one("#profile-list"))
        await pilot.press("enter")
        assert screen.doc.path.name == "tiny_topk.toml"
        assert "moe.top_k" in screen_text(app)
        kinds = [s.key for s in screen.query_one(ProfileTable).order]
        assert kinds.index("moe.top_k") < kinds.index("ternary.num_experts")  # used first
