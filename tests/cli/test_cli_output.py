"""What the CLI prints: profiles show is real TOML, 80-column tables, help text, errors."""

from __future__ import annotations

import hashlib
import json
import tomllib

import pytest
from typer.testing import CliRunner

from moedesk.cli import app
from moedesk.profiles import load_profile, profile_to_dict
from moedesk.profiles.schema import section_fields
from tests.conftest import PROFILES
from tests.unit.test_housekeeping import make_run

runner = CliRunner()


@pytest.mark.parametrize("path", sorted(PROFILES.glob("*.toml")), ids=lambda p: p.stem)
def test_profiles_show_prints_toml_that_reads_back_as_the_same_profile(path, tmp_path,
                                                                       shipped_overrides):
    overrides = shipped_overrides(path)
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    result = runner.invoke(app, ["profiles", "show", str(path), *sets])
    assert result.exit_code == 0, result.output
    text = result.output
    data = tomllib.loads(text)  # real TOML: section headers, true/false, quoted strings
    profile = load_profile(path, overrides)
    assert "[train]" in text and "[health]" in text and "True" not in text
    pasted = tmp_path / "pasted.toml"
    pasted.write_text(text)
    again = load_profile(pasted)
    want, got = profile_to_dict(profile), profile_to_dict(again)
    want.pop("path"), got.pop("path")
    assert got == want
    if profile.kind == "ternary":
        assert "\n[model]" not in text and "lr = 0.0003  # not used by ternary runs" in text
        assert "ternary runs do not read [model], [moe] (left out)" in text
    else:
        assert "\n[ternary]" not in text
        # a note only on keys the schema limits to other kinds (e.g. [data] sources)
        limited = {name for section in ("data", "train", "checkpoint")
                   for name, _t, _d, meta in section_fields(section)
                   if meta.get("kinds") and profile.kind not in meta["kinds"]}
        noted = {line.split("=")[0].strip() for line in text.splitlines()
                 if f"# not used by {profile.kind} runs" in line}
        assert noted == {n for n in limited if f"\n{n} = " in text} and "sources" in noted
        assert f"{data['kind']} runs do not read" in text


def test_profiles_show_keeps_health_rule_tables_and_overrides():
    result = runner.invoke(app, ["profiles", "show", str(PROFILES / "tiny_topk.toml"), "--set",
                                 "health.routing_collapse.after_step=7", "--set", "name=[/]"])
    data = tomllib.loads(result.output)
    assert data["health"]["routing_collapse"] == {"after_step": 7}
    assert data["name"] == "[/]" and 'name = "[/]"' in result.output


def test_profiles_list_fits_80_columns_and_counts_problems(tmp_path):
    folder = tmp_path / "a" / "long" / "folder" / "of" / "profiles"
    folder.mkdir(parents=True)
    (folder / "bad.toml").write_text('name = "x"\nkind = "topk"\n[model\n')
    (folder / "two.toml").write_text('name = "x"\nkind = "nope"\nseed = "s"\n')
    (folder / "tiny_topk.toml").write_text((PROFILES / "tiny_topk.toml").read_text())
    result = runner.invoke(app, ["profiles", "list", "--folder", str(folder)], terminal_width=80)
    lines = result.output.splitlines()
    assert lines[0] == f"profiles in {folder}/"  # the folder once, whole
    assert all(len(line) <= 80 for line in lines[1:]), result.output
    assert any(ln.split()[:1] == ["bad.toml"] and "no (1 problem)" in ln for ln in lines)
    assert any(ln.split()[:1] == ["two.toml"] and "no (2 problems)" in ln for ln in lines)
    assert any(ln.split()[:4] == ["tiny_topk.toml", "tiny-topk", "topk", "120"] for ln in lines)


@pytest.mark.slow
def test_help_shows_no_type_on_flags():
    for command in (["run"], ["resume"], ["rm"], ["prune"], ["query"], ["logs"]):
        result = runner.invoke(app, [*command, "--help"], terminal_width=100)
        assert result.exit_code == 0
        assert "<bool>" not in result.output, result.output
    shown = runner.invoke(app, ["run", "--help"], terminal_width=100).output
    assert "--detach" in shown and "KEY=VALUE" in shown and "--home" in shown and "DIR" in shown


def _checkpoint(run_dir, step: int) -> None:
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    data = b"x" * (100 + step)
    (folder / f"step_{step:08d}.pt").write_bytes(data)
    (folder / f"step_{step:08d}.json").write_text(json.dumps(
        {"step": step, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}))


def test_resume_at_a_missing_step_lists_the_steps_that_exist(home):
    run_id = make_run(home, status="stopped")
    for step in (20, 40):
        _checkpoint(home / str(run_id), step)
    result = runner.invoke(app, ["resume", str(run_id), "--at", "30", "--home", str(home)])
    assert result.exit_code == 2
    assert "no complete checkpoint at step 30" in result.output
    assert "checkpoints exist at steps 20, 40" in result.output.replace("\n", " ")


def test_no_cli_string_carries_rich_markup():
    """Data must never be parsed as markup: the consoles have it off, and no CLI string
    relies on it (it would print literally). Help text (Typer's own rendering) is exempt."""
    import ast
    import importlib
    import re

    cli_app = importlib.import_module("moedesk.cli.app")  # the package attribute is the Typer app

    assert cli_app.console._markup is False and cli_app.err_console._markup is False
    tag = re.compile(r"\[/\]|\[/?(bold|red|green|yellow|dim|cyan|italic)\b")
    root = PROFILES.parent / "moedesk" / "cli"
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        helps = {id(kw.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                 for kw in node.keywords if kw.arg == "help"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in helps:
                assert not tag.search(node.value), f"{path.name}:{node.lineno}: {node.value!r}"
