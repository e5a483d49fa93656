"""`moedesk size PROFILE`: total and active parameters and memory, for any kind."""

from __future__ import annotations

from typing import Annotated

import typer

from moedesk.cli.app import JsonOpt, app, console, fail, print_json, styled
from moedesk.profiles import ProfileError, load_profile, parse_overrides
from moedesk.profiles.sizing import model_size


@app.command()
def size(
    profile: Annotated[str, typer.Argument(help="Profile TOML file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Parameters (total, active, share active) and memory for weights, grads and optimizer."""
    try:
        loaded = load_profile(profile, parse_overrides(set_ or []))
    except ProfileError as exc:
        fail(exc.lines)
    report = model_size(loaded)
    if as_json:
        print_json(report.to_dict())
        return
    console.print(styled((loaded.name, "bold"), f" ({loaded.kind}, {profile})"))
    for line in report.lines():
        console.print(line)
