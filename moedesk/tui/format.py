"""Short human text for numbers, ages, durations, statuses and alert severities, and
model-written text made safe to show.

Every screen formats through here, so a value reads the same in the runs list, the
monitor and the compare view. A model's text (samples, a streamed continuation) is kept
raw wherever it is stored or compared and made visible only where it is drawn:
`terminal_safe` for running text (line breaks and tabs kept, any other control
character, an escape sequence a model happened to write, shown as a mark and never sent
raw), `display_piece` for text held on one line (line breaks and tabs as marks too);
`moedesk sample`/`route` and the TUI's sample view both draw through them.
Times are passed in (the app's clock), never read here, which keeps snapshot tests free
of the wall clock.
"""

from __future__ import annotations

import math

from rich.text import Text

STATUS_STYLES = {
    "running": "bold #5fd75f",
    "queued": "#5fafd7",
    "completed": "#87afd7",
    "stopped": "#d7af5f",
    "failed": "bold #ff5f5f",
    "crashed": "bold #ff5f5f",
}
SEVERITY_STYLES = {"info": "#5fafd7", "warning": "bold #ffaf00", "critical": "bold #ff5f5f"}
SEVERITY_ICONS = {"info": "•", "warning": "▲", "critical": "✖"}
VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍"}  # control characters with a mark of their own
CONTROL_MARK = "·"  # every other control character


def age(seconds: float) -> str:
    """'12s', '5m', '3h', '2d': the largest unit, rounded down."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def duration(seconds: float | None) -> str:
    """'1h02m', '4m05s', '12.3s'."""
    if seconds is None or seconds < 0 or math.isnan(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def number(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def count(value: float | None) -> str:
    """Thousands as k, millions as M: '950', '12.5k', '1.20M'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    value = float(value)
    if abs(value) >= 1e9:
        return f"{value / 1e9:.2f}G"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def health_text(severity: str | None) -> Text:
    if severity is None:
        return Text("ok", style="#5f875f")
    return Text(f"{SEVERITY_ICONS.get(severity, '?')} {severity}",
                style=SEVERITY_STYLES.get(severity, ""))


def step_text(step: int, total: int | None) -> str:
    return f"{step}/{total}" if total else str(step)


def _control(c: str) -> bool:
    return c < " " or "\x7f" <= c <= "\x9f"


def display_piece(text: str) -> str:
    """Model text shown on one line: line breaks and tabs become visible marks, other
    control characters a dot."""
    if not text:
        return text
    return "".join(VISIBLE.get(c, CONTROL_MARK) if _control(c) else c for c in text)


def terminal_safe(text: str) -> str:
    """Model text for a terminal: line breaks and tabs kept, other control characters
    shown as marks, never sent raw."""
    if not text or not any(_control(c) for c in text):
        return text
    return "".join(c if c in "\n\t" else VISIBLE.get(c, CONTROL_MARK) if _control(c) else c
                   for c in text)
