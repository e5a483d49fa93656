"""moedesk's command line: `moedesk COMMAND`, or bare `moedesk` for the TUI.

Each command is a few lines over the Python APIs in profiles/, store/ and runner/.
"""

from __future__ import annotations

import importlib

import typer

from moedesk.cli.app import app, home_of

# each command module registers its commands on `app` when imported; this order is the
# order of `moedesk --help`
for _name in ("runs", "alerts", "query", "profiles", "size", "compare", "analysis"):
    importlib.import_module(f"moedesk.cli.{_name}")


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
