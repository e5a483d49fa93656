"""ProfileList: the profile editor's file list; enter opens the highlighted profile.

An OptionList whose enter key is a shown binding ("⏎ Open" in the footer while the list
has focus), so the way to open a file is on screen, not only in the docs.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import OptionList


class ProfileList(OptionList):
    BINDINGS = [Binding("enter", "select", "Open", id="profile-open",
                        tooltip="Open the highlighted profile in the editor")]
