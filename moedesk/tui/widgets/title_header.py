"""TitleHeader: Textual's Header, whose title update cannot fail while its screen closes.

Textual's Header watches the app's and the screen's title and sub-title and updates its
title label from an async callback. When a screen sets its sub-title (the monitor does on
every status change) just as it is popped, that callback runs after the label is gone and
raised NoMatches, which ended the app. This header installs the same watchers with that
case handled; everything else is Textual's.
"""

from __future__ import annotations

from textual.css.query import NoMatches
from textual.dom import NoScreen
from textual.events import Mount
from textual.widgets import Header
from textual.widgets._header import HeaderTitle


class TitleHeader(Header):
    def _on_mount(self, event: Mount) -> None:
        event.prevent_default()  # instead of Header's own handler, not in addition to it

        def set_title() -> None:
            try:
                self.query_one(HeaderTitle).update(self.format_title())
            except (NoMatches, NoScreen):
                pass  # the screen is closing: there is nothing left to title

        for owner in (self.app, self.screen):
            for name in ("title", "sub_title"):
                self.watch(owner, name, set_title)
