"""moedesk's command line: `moedesk COMMAND`, or bare `moedesk` for the TUI.

Each command is a few lines over the Python APIs in profiles/, store/ and runner/.
"""

from __future__ import annotations

import typer

from moedesk.cli.app import app, home_of, root_home

# each command module registers its commands on `app` when imported; the order of these
# imports is the order of `moedesk --help`, so the sorter leaves them alone
# isort: off
from moedesk.cli import runs  # noqa: F401
from moedesk.cli import logs  # noqa: F401
from moedesk.cli import housekeeping  # noqa: F401
from moedesk.cli import alerts  # noqa: F401
from moedesk.cli import query  # noqa: F401
from moedesk.cli import profiles  # noqa: F401
from moedesk.cli import size  # noqa: F401
from moedesk.cli import compare  # noqa: F401
from moedesk.cli import analysis  # noqa: F401
from moedesk.cli import sample  # noqa: F401
from moedesk.cli import watch  # noqa: F401
from moedesk.cli import data  # noqa: F401
from moedesk.cli import export  # noqa: F401
# isort: on


@app.callback()
def _root(ctx: typer.Context,
          home: str = typer.Option(None, "--home", metavar="DIR",
                                   help="Data home for the TUI and every command (default"
                                        " ./runs, or $MOEDESK_HOME).")) -> None:
    """Open the TUI when no command is given."""
    root_home[0] = home
    if ctx.invoked_subcommand is None:
        from moedesk.tui.app import run_app

        run_app(home_of(home))


def main() -> None:
    app()


__all__ = ["app", "main"]
