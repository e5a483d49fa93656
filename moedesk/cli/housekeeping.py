"""Run housekeeping commands: rm, prune, tag, untag, note, rename.

A few lines each over `moedesk.store.housekeeping` (which the TUI calls too).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from moedesk.cli.app import HomeOpt, RunArg, age, app, console, fail, home_of, plural, styled
from moedesk.store import StoreError
from moedesk.store import housekeeping as hk
from moedesk.store.reads import RunInfo

YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask; remove at once.")]


def size_text(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def can_ask() -> bool:
    """Whether there is a person at a terminal to answer a question."""
    return sys.stdin.isatty()


def _confirm(runs: list[RunInfo], yes: bool) -> bool:
    """Ask before removing, unless --yes; without a terminal to ask on, refuse."""
    if yes:
        return True
    if not can_ask():
        fail(f"not removing {plural(len(runs), 'run')} without asking: pass --yes "
             "(no terminal to ask on)")
    return typer.confirm(f"remove {plural(len(runs), 'run')} and all their data?", default=False)


def _list(runs: list[RunInfo], verb: str) -> None:
    now = time.time()
    for r in runs:
        size = hk.folder_bytes(Path(r.row["run_dir"])) if r.row.get("run_dir") else 0
        console.print(f"  {verb} run {r.id} ({r.name}): {r.kind}, {r.status} at step "
                      f"{r.last_step}/{r.total_steps}, {age(now - r.created_at)} old, "
                      f"{size_text(size)}")


def _removed(done: list[hk.Removed]) -> None:
    freed = sum(r.bytes_freed for r in done)
    for r in done:
        console.print(f"removed run {r.run_id} ({r.name}, {r.status})")
    console.print(f"removed {plural(len(done), 'run')}, freed {size_text(freed)}")


@app.command("rm")
def rm(refs: Annotated[list[str], typer.Argument(metavar="RUN...", help="Run ids or names.",
                                                 show_default=False)],
       yes: YesOpt = False, home: HomeOpt = None) -> None:
    """Remove runs: their rows, checkpoints and folders. Refuses a run still running."""
    home = home_of(home)
    try:
        runs = hk.resolve(home, refs)
        busy = hk.active(runs)
        if busy:
            fail([f"run {r.id} ({r.name}) is {r.status}: stop it first (moedesk stop {r.id}); "
                  "nothing was removed" for r in busy])
        _list(runs, "remove")
        if not _confirm(runs, yes):
            console.print("nothing removed")
            return
        _removed(hk.remove_runs(home, [r.id for r in runs]))
    except StoreError as exc:
        fail(str(exc))


@app.command()
def prune(
    status: Annotated[list[str] | None, typer.Option(
        "--status", metavar="STATUS", help="Only runs that ended so: completed, failed, stopped, "
        "crashed (repeatable, or comma-separated).")] = None,
    older_than: Annotated[str | None, typer.Option(
        "--older-than", metavar="AGE", help="Only runs created longer ago than AGE: 30m, "
        "12h, 7d, 2w.")] = None,
    keep_last: Annotated[int | None, typer.Option(
        "--keep-last", metavar="N", help="Keep the N newest of the matching runs.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go.")] = False,
    yes: YesOpt = False,
    home: HomeOpt = None,
) -> None:
    """Remove finished runs in bulk (never an active one); --dry-run shows them first."""
    home = home_of(home)
    statuses = tuple(s.strip() for v in status or [] for s in v.split(",") if s.strip())
    try:
        older = hk.parse_duration(older_than) if older_than is not None else None
        picked = hk.plan_prune(home, statuses=statuses, older_than_s=older, keep_last=keep_last)
    except ValueError as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(str(exc))
    if not picked:
        console.print("no runs to prune")
        return
    _list(picked, "would remove" if dry_run else "remove")
    if dry_run:
        console.print(f"{plural(len(picked), 'run')} would be removed (dry run: nothing changed)")
        return
    if not _confirm(picked, yes):
        console.print("nothing removed")
        return
    try:
        _removed(hk.remove_runs(home, [r.id for r in picked]))
    except StoreError as exc:
        fail(str(exc))


def _tags_line(info: RunInfo, tags: list[str]) -> None:
    console.print(styled(f"run {info.id} ({info.name}) tags: ",
                         (" ".join(tags), "cyan") if tags else ("none", "dim")))


@app.command()
def tag(ref: RunArg,
        tags: Annotated[list[str], typer.Argument(metavar="TAG...", help="Tags to add.",
                                                  show_default=False)],
        home: HomeOpt = None) -> None:
    """Tag a run (filter with `moedesk runs --tag T` or `--filter tag:T`)."""
    try:
        _tags_line(*hk.tag(home_of(home), ref, tags))
    except StoreError as exc:
        fail(str(exc))


@app.command()
def untag(ref: RunArg,
          tags: Annotated[list[str], typer.Argument(metavar="TAG...", help="Tags to remove.",
                                                    show_default=False)],
          home: HomeOpt = None) -> None:
    """Remove tags from a run."""
    try:
        _tags_line(*hk.untag(home_of(home), ref, tags))
    except StoreError as exc:
        fail(str(exc))


@app.command()
def note(ref: RunArg,
         text: Annotated[list[str] | None, typer.Argument(
             metavar="TEXT...", help="The note (words are joined by spaces).",
             show_default=False)] = None,
         clear: Annotated[bool, typer.Option("--clear", help="Remove the note.")] = False,
         home: HomeOpt = None) -> None:
    """Write a note on a run (shown by `moedesk show`); replaces the previous one."""
    words = " ".join(text or []).strip()
    if not words and not clear:
        fail("give the note's text, or --clear to remove it")
    if words and clear:
        fail("give either a note's text or --clear, not both")
    try:
        info = hk.set_note(home_of(home), ref, None if clear else words)
    except StoreError as exc:
        fail(str(exc))
    console.print(f"run {info.id} ({info.name}): " + ("note cleared" if clear else "note saved"))


@app.command()
def rename(ref: RunArg,
           name: Annotated[str, typer.Argument(metavar="NAME", help="The new name (unique, not "
                                                                    "a number).",
                                               show_default=False)],
           home: HomeOpt = None) -> None:
    """Rename a run; names are unique within a home and never a plain number."""
    try:
        info, new = hk.rename(home_of(home), ref, name)
    except StoreError as exc:
        fail(str(exc))
    console.print(f"run {info.id}: {info.name} -> {new}")
