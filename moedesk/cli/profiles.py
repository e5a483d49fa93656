"""`moedesk profiles list|show|validate`: the shipped and local run profiles."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moedesk.cli.app import JsonOpt, app, console, fail, plural, print_json, shown_path, styled
from moedesk.paths import profiles_dir
from moedesk.profiles import ProfileError, load_profile, parse_overrides, profile_to_dict
from moedesk.profiles.render import profile_toml

profiles_app = typer.Typer(help="List, show and validate run profiles.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE", help="Override a key: --set train.lr=1e-3 (repeatable).")]


def _profile_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.toml"))


@profiles_app.command("list")
def list_profiles(
    folder: Annotated[Path | None, typer.Option(metavar="DIR", help="Folder of profiles.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every profile in profiles/ with its kind and whether it validates."""
    folder = folder or profiles_dir()
    rows = []
    for path in _profile_files(folder):
        try:
            p = load_profile(path)
            rows.append({"file": str(path), "name": p.name, "kind": p.kind,
                         "steps": p.train.steps, "valid": True, "problems": []})
        except ProfileError as exc:
            rows.append({"file": str(path), "name": "", "kind": "", "steps": None,
                         "valid": False, "problems": exc.lines})
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print(f"no profiles in {folder}")
        return
    # the file is what a user types next: it is never cut. Files of a folder with a long
    # path are listed by name under the folder, so the table fits 80 columns.
    where = shown_path(folder)
    by_name = len(where) > 24
    if by_name:
        console.print(f"profiles in {where}/", soft_wrap=True)
    table = Table("file", "name", "kind", "steps", "valid", box=None, header_style="bold")
    for column in table.columns:
        column.no_wrap = True
    table.columns[1].overflow = "ellipsis"
    for r in rows:
        valid = styled("yes") if r["valid"] else styled(
            ("no", "red"), f" ({plural(len(r['problems']), 'problem')})")
        file = Path(r["file"]).name if by_name else shown_path(r["file"])
        table.add_row(file, r["name"], r["kind"], str(r["steps"] or "-"), valid)
    console.print(table)
    if any(not r["valid"] for r in rows):
        console.print("see the problems with `moedesk profiles validate FILE`", style="dim")


@profiles_app.command("show")
def show_profile(
    profile: Annotated[str, typer.Argument(metavar="PROFILE", help="Profile TOML file.")],
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The fully resolved profile as TOML (every key, defaults filled in), ready to save."""
    try:
        p = load_profile(profile, parse_overrides(set_ or []))
    except ProfileError as exc:
        fail(exc.lines)
    if as_json:
        print_json(profile_to_dict(p))
        return
    sys.stdout.write(profile_toml(p, profile))


@profiles_app.command("validate")
def validate(
    profiles: Annotated[list[str], typer.Argument(metavar="PROFILE...",
                                                  help="Profile files to check.")],
    set_: SetOpt = None,
) -> None:
    """Check profiles; print every problem with its file and key. Exit 2 if any is bad."""
    bad = []
    for path in profiles:
        try:
            load_profile(path, parse_overrides(set_ or []))
            console.print(styled(("ok", "green"), f" {path}"))
        except ProfileError as exc:
            bad.extend(exc.lines)
    if bad:
        fail(bad)
