"""RunStats: the monitor's stats block, redrawn on every new metric and every status change.

Line 1, progress: the status, the step, and the ETA while the run is active or how long
it took once it ended. Line 2, speed: ms per step and tokens (or samples) per second.
Line 3, experts: dead experts and usage std (ternary: the goodness delta and its
verdict first). Line 4, only once a run has ended with something to say: how it ended,
the stop reason (`stopped by health rule ...`, `stopped by request`) or the error. The
line count moves only with the status, so a new metric never costs a screen layout.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from moedesk.stats import names
from moedesk.tui import bands
from moedesk.tui import format as fmt
from moedesk.tui.model import RunData, RunRow

OUTCOME_STYLES = {"failed": "#ff5f5f", "crashed": "#ff5f5f", "stopped": "#d7af5f",
                  "completed": "dim"}


def outcome(row: RunRow) -> str | None:
    """How an ended run ended, in one line; None while it is active or when nothing is known."""
    if row.active:
        return None
    if row.error:
        return row.error.strip().splitlines()[0]
    if row.status == "crashed":
        return "the supervisor is gone: the run ended without finishing"
    return None


def stats_text(data: RunData, row: RunRow) -> Text:
    progress = Text()
    progress.append(fmt.status_text(row.status))
    progress.append(f"  step {fmt.step_text(row.step, row.total_steps)}")
    step_s = data.value(names.SYS_STEP_S)
    if row.active and step_s and row.total_steps:
        progress.append(f"  ETA {fmt.duration((row.total_steps - row.step) * step_s)}",
                        style="dim")
    elif not row.active and row.started_at is not None and row.ended_at is not None:
        progress.append(f"  took {fmt.duration(row.ended_at - row.started_at)}", style="dim")

    speed = Text()
    if step_s:
        speed.append(f"{step_s * 1000:.0f} ms/step  ", style="dim")
    rate = data.value(names.TRAIN_SAMPLES_PER_S) if row.kind == "ternary" else None
    if rate is not None:
        speed.append(f"{fmt.count(rate)} samples/s")
    elif data.value(names.TRAIN_TOKENS_PER_S) is not None:
        speed.append(f"{fmt.count(data.value('train/tokens_per_s'))} tokens/s")

    experts = Text()
    if row.kind == "ternary":
        delta = data.value(names.FF_GOODNESS_DELTA)
        label, colour = bands.goodness_verdict(row, delta)
        experts.append(f"Δg {fmt.number(delta, 3)} ")
        experts.append(label, style=colour)
        experts.append("  ")
    if row.kind in ("topk", "ternary", "external"):
        dead = data.value(names.MOE_DEAD_EXPERTS)
        if dead is not None:
            experts.append(f"dead experts {dead:.0f}", style="bold #ff5f5f" if dead else "")
        usage = data.value(names.MOE_USAGE_STD)
        if usage is not None:
            experts.append(f"  usage std {usage:.3f}", style="dim")

    lines = [progress, speed, experts]
    ended = outcome(row)
    if ended is not None:
        lines.append(Text(ended, style=OUTCOME_STYLES.get(row.status, "")))
    return Text("\n").join(lines)


class RunStats(Static):
    DEFAULT_CSS = "RunStats { height: auto; text-wrap: nowrap; text-overflow: ellipsis; }"

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__("", id=id, classes=classes, markup=False)
        self.lines = 0

    def show(self, data: RunData, row: RunRow) -> None:
        text = stats_text(data, row)
        lines = len(text.plain.split("\n"))
        self.update(text, layout=lines != self.lines)
        self.lines = lines
