"""`moedesk size`: the CLI prints the real models' numbers, as JSON and as a table."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from moedesk.cli import app
from moedesk.profiles import load_profile
from tests.conftest import PROFILES

runner = CliRunner()


def built(name: str):
    """The real model of a shipped profile: the figures the CLI must agree with."""
    from moedesk.train.loop import build_model

    return build_model(load_profile(PROFILES / f"{name}.toml"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dense", "top2"])
def test_size_json_counts_the_real_model(name):
    result = runner.invoke(app, ["size", str(PROFILES / f"{name}.toml"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    model = built(name)
    total = sum(t.numel() for t in model.parameters())
    assert report["total_params"] == total
    assert report["active_params"] == model.num_active_params()
    assert report["weights_fp32_bytes"] == 4 * total
    assert report["adamw_bytes"] == 8 * total  # two fp32 moments per parameter


@pytest.mark.slow
def test_size_table_prints_the_real_totals():
    result = runner.invoke(app, ["size", str(PROFILES / "top2.toml")])
    assert result.exit_code == 0, result.output
    model = built("top2")
    total, active = sum(t.numel() for t in model.parameters()), model.num_active_params()
    assert f"total {total / 1e6:.2f}M" in result.output
    assert f"active {active / 1e6:.2f}M ({100 * active / total:.1f}%)" in result.output


def test_size_of_a_bad_profile_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nkind = "topk"\nseed = 1\n[moe]\ntop_k = 9\n')
    result = runner.invoke(app, ["size", str(bad)])
    assert result.exit_code == 2 and "moe.top_k: got 9" in result.output
