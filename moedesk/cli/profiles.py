"""`moedesk profiles list|show|validate`: the shipped and local run profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moedesk.cli.app import JsonOpt, app, console, fail, print_json
from moedesk.paths import profiles_dir
from moedesk.profiles import ProfileError, load_profile, parse_overrides, profile_to_dict

profiles_app = typer.Typer(help="List, show and validate run profiles.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")


def _profile_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.toml"))


@profiles_app.command("list")
def list_profiles(
    folder: Annotated[Path | None, typer.Option(help="Folder of profiles.")] = None,
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
    table = Table("file", "name", "kind", "steps", "valid", box=None, header_style="bold")
    for r in rows:
        table.add_row(r["file"], r["name"], r["kind"], str(r["steps"] or "-"),
                      "yes" if r["valid"] else f"[red]no[/] ({len(r['problems'])} problems)")
    console.print(table if rows else f"no profiles in {folder}")


@profiles_app.command("show")
def show_profile(
    profile: Annotated[str, typer.Argument(help="Profile TOML file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The fully resolved profile: every key with its value, defaults filled in."""
    try:
        p = load_profile(profile, parse_overrides(set_ or []))
    except ProfileError as exc:
        fail(exc.lines)
    data = profile_to_dict(p)
    if as_json:
        print_json(data)
        return
    console.print(f"[bold]{p.name}[/] kind {p.kind} seed {p.seed}  ({profile})", highlight=False)
    relevant = {"dense": ("model", "train", "data", "checkpoint", "health"),
                "topk": ("model", "moe", "train", "data", "checkpoint", "health"),
                "ternary": ("ternary", "train", "data", "checkpoint", "health")}[p.kind]
    for section in relevant:
        console.print(f"[bold cyan][{section}][/]", highlight=False)
        for key, value in data[section].items():
            console.print(f"  {key} = {value!r}", highlight=False)


@profiles_app.command("validate")
def validate(
    profiles: Annotated[list[str], typer.Argument(help="Profile files to check.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key.")] = None,
) -> None:
    """Check profiles; print every problem with its file and key. Exit 2 if any is bad."""
    bad = []
    for path in profiles:
        try:
            load_profile(path, parse_overrides(set_ or []))
            console.print(f"[green]ok[/] {path}", highlight=False)
        except ProfileError as exc:
            bad.extend(exc.lines)
    if bad:
        fail(bad)
