"""The Typer app object and the options every command shares.

Command modules (`runs.py`, `query.py`, `profiles.py`, `alerts.py`, ...) import `app`
from here and register themselves; `moedesk/cli/__init__.py` imports them all. Nothing
here imports torch, so `moedesk --help` stays fast.

No data is ever parsed as Rich markup: both consoles have markup off, so run names,
query values, profile values, error texts and log lines print exactly as they are.
Styling goes through `Text` objects (`styled`), never through markup in an f-string.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import typer.core
from rich.console import Console
from rich.text import Text

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

console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)


def _flag_type_hidden(display_type_rich):
    # Typer 0.29 prints a type after every option, `--detach <bool>` included, which reads
    # as if the flag took a value; a flag shows no type (an explicit metavar still shows)
    def display(self, ctx):
        if self.is_flag and self.metavar is None:
            return None
        return display_type_rich(self, ctx)
    return display


typer.core.TyperOption.display_type_rich = _flag_type_hidden(
    typer.core.TyperOption.display_type_rich)


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line from literal pieces: "text" or ("text", "style"). Nothing is markup."""
    return Text.assemble(*parts)

HomeOpt = Annotated[Path | None, typer.Option(
    "--home", metavar="DIR", help="Data home holding moedesk.db and run folders "
                   "(default ./runs, or $MOEDESK_HOME).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
RunArg = Annotated[str, typer.Argument(metavar="RUN", help="Run id or name.", show_default=False)]
LatestRunArg = Annotated[str | None, typer.Argument(
    metavar="RUN", help="Run id or name (default: the newest run).", show_default=False)]

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
        err_console.print(styled(("error:", "bold red"), " ", line), soft_wrap=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def plural(n: int, word: str, words: str | None = None) -> str:
    """"1 seed", "3 seeds", "1 problem", "0 problems"."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def shown_path(path: str | Path) -> str:
    """A path as short as it can be said: relative to the working folder when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def when(stamp: float | None) -> str:
    """A Unix time as local 'YYYY-MM-DD HH:MM:SS' (the store keeps Unix seconds)."""
    if stamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def duration(seconds: float | None) -> str:
    """A duration as 45s, 12m05s, 3h07m (the ETA and wall-time format)."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def age(seconds: float | None) -> str:
    """A short human age: 42s, 7m, 3h, 2d."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
