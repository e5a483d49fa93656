"""`moedesk alerts [RUN]`: health alerts of one run (or of every run), open ones marked."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from moedesk.cli.app import HomeOpt, JsonOpt, app, console, fail, home_of, print_json, styled
from moedesk.store import StoreError, open_reader

SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


def _plain(value):
    # JSON has no NaN or Infinity: non-finite values travel as strings, like the protocol's
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


@app.command()
def alerts(
    ref: Annotated[str | None, typer.Argument(metavar="RUN", help="Run id or name (default: every run).",
                                              show_default=False)] = None,
    open_only: Annotated[bool, typer.Option("--open", help="Only alerts still open.")] = False,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Health alerts: when each fired, its severity, what it saw and what to do about it."""
    try:
        reader = open_reader(home_of(home))
        run_id = reader.run(ref).id if ref is not None else None
        found = reader.alerts(run_id, open_only=open_only)
    except StoreError as exc:
        fail(str(exc))
    if as_json:
        print_json([{k: _plain(v) for k, v in a.items()} for a in found])
        return
    if not found:
        console.print("no alerts" + (" open" if open_only else ""))
        return
    for a in found:
        state = "open" if a["cleared_step"] is None else f"cleared at step {a['cleared_step']}"
        style = SEVERITY_STYLE.get(a["severity"], "")
        console.print(styled(f"run {a['run_id']} step {a['step']} ", (a["severity"], style), " ",
                             (a["rule"], "bold"), f" ({state}): {a['message'] or ''}"),
                      soft_wrap=True)
    console.print("\nsuggested actions:", style="bold")
    actions = {a["rule"]: a["action"] for a in found if a["action"]}
    for rule, action in actions.items():
        console.print(f"  {rule}: {action}", soft_wrap=True)
