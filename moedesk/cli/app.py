"""The Typer app object and the options every command shares.

Command modules (`runs.py`, `query.py`, `profiles.py`, `alerts.py`, ...) import `app`
from here and register themselves; `moedesk/cli/__init__.py` imports them all. Nothing
here imports torch, so `moedesk --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from moedesk.paths import data_home

app = typer.Typer(
    name="moedesk",
    help="A terminal workbench for training and watching Mixture-of-Experts models.\n\n"
         "Run `moedesk` alone to open the TUI.",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

console = Console()
err_console = Console(stderr=True)

HomeOpt = Annotated[Path | None, typer.Option(
    "--home", help="Data home holding moedesk.db and run folders "
                   "(default ./runs, or $MOEDESK_HOME).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
RunArg = Annotated[str, typer.Argument(help="Run id or name.", show_default=False)]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CRASHED, EXIT_STOPPED = 0, 1, 2, 3, 4
EXIT_FOR_STATUS = {"completed": EXIT_OK, "failed": EXIT_FAILED, "crashed": EXIT_CRASHED,
                   "stopped": EXIT_STOPPED}


# `moedesk --home H CMD`: the root callback (cli/__init__.py) runs before the command and
# leaves H here for `home_of`
root_home: list[str | None] = [None]


def home_of(home: Path | None) -> Path:
    """The data home: the command's --home, else the one given before the command
    (`moedesk --home H CMD`), else $MOEDESK_HOME, else ./runs."""
    return data_home(home if home is not None else root_home[0])


def fail(message: str | list[str], code: int = EXIT_USAGE) -> NoReturn:
    """Print a clear error (no traceback) and exit with `code`."""
    lines = [message] if isinstance(message, str) else message
    for line in lines:
        err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def age(seconds: float | None) -> str:
    """A short human age: 42s, 7m, 3h, 2d."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
