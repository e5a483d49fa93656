"""`moedesk query "SQL"`: read-only SQL over runs/moedesk.db, as a table, JSON or CSV."""

from __future__ import annotations

import csv
import sys
from typing import Annotated

import typer
from rich.table import Table

from moedesk.cli.app import HomeOpt, JsonOpt, app, console, err_console, fail, home_of, print_json
from moedesk.store import StoreError, open_reader


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="A read-only SQL statement (SELECT, WITH, PRAGMA).")],
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Most rows printed.")] = 1000,
    home: HomeOpt = None,
) -> None:
    """Query the run store read-only; write statements are refused."""
    if as_json and as_csv:
        fail("choose one of --json and --csv")
    try:
        reader = open_reader(home_of(home))
        columns, rows, truncated = reader.query(sql, limit=limit)
    except StoreError as exc:
        fail(str(exc))
    if as_json:
        print_json([dict(zip(columns, row, strict=True)) for row in rows])
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        table = Table(*columns, box=None, header_style="bold")
        for row in rows:
            table.add_row(*["NULL" if v is None else str(v) for v in row])
        console.print(table)
    if truncated:
        err_console.print(f"[yellow]note:[/] output capped at {limit} rows; use --limit or a "
                          "LIMIT clause", highlight=False)
