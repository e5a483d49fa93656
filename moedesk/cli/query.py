"""`moedesk query "SQL"`: read-only SQL over runs/moedesk.db, as a table, JSON or CSV.

The guard (what is refused, the limits, Ctrl-C) is `moedesk.store.query`'s; the table
is `grid.py`'s, as fast as CSV for any number of rows.
"""

from __future__ import annotations

import csv
import sys
from typing import Annotated

import typer

from moedesk.cli.app import (
    HomeOpt,
    JsonOpt,
    app,
    console,
    err_console,
    fail,
    home_of,
    print_json,
    styled,
)
from moedesk.cli.grid import table_lines
from moedesk.store import StoreError
from moedesk.store.query import MAX_LIMIT, QueryInterrupted, run_query

EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C


@app.command()
def query(
    sql: Annotated[str, typer.Argument(metavar="SQL", help="One read-only SQL statement (SELECT, "
                                                           "WITH, a reading PRAGMA).")],
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    limit: Annotated[int, typer.Option(metavar="N", help=f"Most rows printed (1 to {MAX_LIMIT:,}).")
                     ] = 1000,
    home: HomeOpt = None,
) -> None:
    """Query the run store read-only: writes, ATTACH, VACUUM and pragma changes are refused.

    Times are Unix seconds: `datetime(created_at, 'unixepoch', 'localtime')` shows a date.
    """
    if as_json and as_csv:
        fail("choose one of --json and --csv")
    try:
        result = run_query(home_of(home), sql, limit=limit)
    except QueryInterrupted as exc:
        fail(str(exc), code=EXIT_INTERRUPTED)
    except StoreError as exc:
        fail(str(exc))
    if as_json:
        print_json([dict(zip(result.columns, row, strict=True)) for row in result.rows])
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(result.rows)
    elif result.columns:
        width = console.width if console.is_terminal else None
        sys.stdout.write("\n".join(table_lines(result.columns, result.rows, width=width)) + "\n")
    if result.truncated:
        err_console.print(styled(("note:", "yellow"), f" output capped at {limit:,} rows; use "
                                 "--limit N or a LIMIT clause"))
