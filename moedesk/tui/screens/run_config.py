"""RunConfig: a run's resolved config (what it was started with), as pasteable TOML.

The same text as `moedesk profiles show` of the stored config: every default filled in,
`[section]` headers, values TOML can read back. The row is read with
`reading.read_in_worker`; a config that cannot be rebuilt (a damaged row, an older
schema) is shown as the stored JSON instead, with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Static

from moedesk.profiles import ProfileError, profile_from_dict
from moedesk.profiles.render import profile_toml
from moedesk.tui.model import RunRow
from moedesk.tui.reading import read_in_worker


def config_text(config_json: str | None, source: str = "") -> str:
    """The stored config as resolved TOML, or the raw JSON with why it could not be."""
    try:
        return profile_toml(profile_from_dict(json.loads(config_json or "")), source)
    except (ProfileError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"# the stored config cannot be read as a profile ({exc}); as stored:\n" \
               f"{config_json or '(none)'}\n"


class RunConfig(ModalScreen[None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Close", id="config-close",
                        tooltip="Back to the run")]

    @dataclass
    class Loaded(Message):
        text: str | None
        error: str | None

    def __init__(self, row: RunRow):
        super().__init__(classes="dialog-screen")
        self.row = row

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog config-dialog"):
            yield Static(Text(f"Run {self.row.id} ({self.row.name}): resolved config"),
                         classes="dialog-title")
            with VerticalScroll(id="config-scroll"):
                yield Static(Text("reading..."), id="config-text")
            yield Static("the run's config.json as TOML (moedesk profiles show reads the same)"
                         " · esc closes", classes="dialog-hint")

    def on_mount(self) -> None:
        run_id, source = self.row.id, f"run {self.row.id}"
        read_in_worker(self, lambda reader: config_text(
            reader.run(run_id).row.get("config_json"), source), self.Loaded,
            name="config", description="reading the run's config")

    def on_run_config_loaded(self, message: Loaded) -> None:
        # data, never markup: a run named "[/]" or a prompt holding brackets shows as is
        self.query_one("#config-text", Static).update(Text(message.error or message.text or ""))
        self.query_one("#config-scroll").focus()
