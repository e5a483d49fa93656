"""`moedesk size`: the CLI reports the same numbers as the sizing API, for every kind."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from moedesk.cli import app
from moedesk.profiles import load_profile
from moedesk.profiles.sizing import model_size
from tests.conftest import PROFILES

runner = CliRunner()


def test_size_json_matches_the_api_for_each_kind():
    for name in ("dense", "top2", "ternary243"):
        path = PROFILES / f"{name}.toml"
        result = runner.invoke(app, ["size", str(path), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == model_size(load_profile(path)).to_dict()


def test_size_table_shows_total_and_active():
    result = runner.invoke(app, ["size", str(PROFILES / "top2.toml")])
    assert result.exit_code == 0 and "total" in result.output and "active" in result.output


def test_size_of_a_bad_profile_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nkind = "topk"\nseed = 1\n[moe]\ntop_k = 9\n')
    result = runner.invoke(app, ["size", str(bad)])
    assert result.exit_code == 2 and "moe.top_k: got 9" in result.output
