"""KeyFooter: Textual's footer, fitted to its width instead of clipped.

Textual's footer lays every key out in one row; at 80 columns the screen's keys and the
app's (`n a p q`) do not fit, and the clipped labels bled past the command-palette key
(`^p paletteu`). This footer shows the keys that fit, in order: the focused widget's and
the screen's first, then the app's `q` (quit), then its navigation keys. What does not
fit is dropped whole; every key is always in the command palette (`ctrl+p`), which the
footer keeps on its right.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

KEEP_FIRST_APP_KEYS = ("quit",)  # of the app's keys, the one a footer never drops first


def key_width(key: FooterKey, compact: bool) -> int:
    """Cells a key takes in the footer, its margin included."""
    label = key.key_display + (f" {key.description}" if key.description else "")
    if not compact:
        label = f" {key.key_display} {key.description} " if key.description else label
    if key.has_class("-command-palette"):
        return len(label) + 1 + (0 if compact else 1)  # its left border, its padding
    return len(label) + 1


class KeyFooter(Footer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._composed_width = -1

    def compose(self) -> ComposeResult:
        items: list[Widget] = list(super().compose())
        self._composed_width = self.size.width
        palette = [w for w in items if w.has_class("-command-palette")]
        keys = [w for w in items if isinstance(w, FooterKey) and w not in palette]
        budget = self.size.width - sum(key_width(w, self.compact) for w in palette)
        if not self.size.width or sum(key_width(w, self.compact) for w in keys) <= budget:
            yield from items
            return
        shown = set(self._fitting(keys, budget))
        yield from (w for w in items if w in palette or w in shown)

    def _fitting(self, keys: list[FooterKey], budget: int) -> list[FooterKey]:
        bindings = self.screen.active_bindings
        app_keys = [k for k in keys if k.key in bindings and bindings[k.key].node is self.app]
        own = [k for k in keys if k not in app_keys]
        first = [k for k in app_keys if k.action in KEEP_FIRST_APP_KEYS]
        order = own + first + [k for k in app_keys if k not in first]
        shown, used = [], 0
        for key in order:
            width = key_width(key, self.compact)
            if used + width > budget:
                break
            shown.append(key)
            used += width
        return shown

    def on_resize(self) -> None:
        if self.size.width != self._composed_width and self._bindings_ready:
            self.call_after_refresh(self.recompose)
