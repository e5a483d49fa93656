"""moedesk's command line: `moedesk COMMAND`, or bare `moedesk` for the TUI.

Each command is a few lines over the Python APIs in profiles/, store/ and runner/.
"""

from __future__ import annotations

import importlib

import typer

from moedesk.cli.app import app, home_of

_COMMAND_MODULES = ("runs", "query", "profiles", "alerts", "size", "compare", "analysis")
for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(f"moedesk.cli.{_name}")
    except ModuleNotFoundError as exc:  # a command module not written yet
        if exc.name != f"moedesk.cli.{_name}":
            raise


@app.callback()
def _root(ctx: typer.Context,
          home: str = typer.Option(None, "--home", help="Data home for the TUI.")) -> None:
    """Open the TUI when no command is given."""
    if ctx.invoked_subcommand is None:
        from moedesk.tui.app import run_app

        run_app(home_of(home))


def main() -> None:
    app()


__all__ = ["app", "main"]
