"""The PNG plots: seed 002's routing figures and the loss curves are drawn, readable, labelled."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from moedesk.cli import app
from moedesk.plots import CLASS_PNG, ROUTING_PNG, routing_pngs
from moedesk.plots.curves import Curves, loss_curves, moving_mean
from moedesk.plots.figure import LOAD_EDGES, load_scale
from moedesk.stats.routing import pool_payloads
from moedesk.store import connect_writer
from moedesk.tui.palette import COLOURS
from tests.images import assert_readable_png
from tests.unit.test_compare_results import fake_run, routing_payload


@pytest.mark.slow
def test_routing_pngs_show_every_layer_and_a_dead_expert(tmp_path):
    dead = routing_payload(3, specialised=True)
    for row in dead["by_class"][:1]:
        row[:] = [0] * len(row)
    dead["histogram"][0] = 0
    paths = routing_pngs({1: routing_payload(1, False), 3: dead}, tmp_path, "two layers")
    assert [p.name for p in paths] == [ROUTING_PNG, CLASS_PNG]
    for path in paths:
        assert_readable_png(path, min_width=1000)


def test_the_colour_scale_is_the_tui_palette():
    cmap, norm = load_scale()
    def rgb(colour):
        return tuple(round(int(colour[i:i + 2], 16) / 255, 4) for i in (1, 3, 5))

    def rounded(values):
        return tuple(round(float(v), 4) for v in values[:3])

    assert [rounded(cmap(i)) for i in range(cmap.N)] == [rgb(c) for c in COLOURS[1:]]
    assert norm.boundaries.tolist() == list(LOAD_EDGES)
    assert rounded(cmap.get_bad()) == rgb(COLOURS[0])
    assert rounded(cmap.get_over()) == rgb(COLOURS[-1])


@pytest.mark.slow
def test_loss_curves_draw_every_seed_of_both_models(tmp_path):
    curves = [Curves(model, seed, [(s, 3 - s / 100 + seed % 3 / 10) for s in range(1, 101)],
                     [(s, 3.2 - s / 120) for s in (25, 50, 75, 100)])
              for model in ("dense", "moe") for seed in (0, 1, 2)]
    assert_readable_png(loss_curves(curves, tmp_path / "curves.png", "dense vs moe"),
                        min_width=1200)
    assert moving_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_pooling_adds_counts_and_refuses_other_layouts():
    a, b = routing_payload(1, True), routing_payload(1, False)
    pooled = pool_payloads([a, b])
    assert pooled["tokens"] == a["tokens"] + b["tokens"] and pooled["runs"] == 2
    assert pooled["by_class"][0][0] == a["by_class"][0][0] + b["by_class"][0][0]
    other = dict(b, num_experts=8)
    try:
        pool_payloads([a, other])
    except ValueError as exc:
        assert "different layouts" in str(exc)
    else:
        raise AssertionError("pooled different layouts")


@pytest.mark.slow
def test_analysis_png_writes_both_plots(home, tmp_path):
    db = connect_writer(home / "moedesk.db")
    run_id = fake_run(db, home, "lab_moe.toml", 7, 10.0, 0.01, (2000, 1300))
    db.close()
    out = tmp_path / "png"
    result = CliRunner().invoke(app, ["analysis", str(run_id), "--png", str(out), "--home",
                                      str(home)], env={"NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "routing-analysis.png" in result.stdout and "expert-by-class.png" in result.stdout
    for name in (ROUTING_PNG, CLASS_PNG):
        assert_readable_png(out / name)
