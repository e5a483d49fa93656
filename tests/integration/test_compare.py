"""`moedesk compare` end to end: real runs in the store, the protocol asserted on them."""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import REPO, moedesk
from tests.images import assert_readable_png

DENSE, MOE = "profiles/lab_dense.toml", "profiles/lab_moe.toml"


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    home = tmp_path_factory.mktemp("compare") / "home"
    out = home.parent / "out"
    result = moedesk("compare", DENSE, MOE, "--seeds", "2", "--steps", "20", "--out", str(out),
                     home=home, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    conn = sqlite3.connect(f"file:{home / 'moedesk.db'}?mode=ro", uri=True)
    yield home, out, manifest, conn, result.stdout
    conn.close()


def series(conn, run_id: int, name: str) -> list[tuple[int, float]]:
    return conn.execute("SELECT step, value FROM metrics WHERE run_id = ? AND name = ?"
                        " ORDER BY step", (run_id, name)).fetchall()


def test_every_run_is_a_real_completed_run_in_the_store(compared):
    _, out, m, conn, stdout = compared
    ids = m["baseline"]["run_ids"] + m["variant"]["run_ids"]
    rows = conn.execute(f"SELECT id, kind, status, seed, total_steps, last_step, config_json "
                        f"FROM runs WHERE id IN ({','.join('?' * len(ids))}) ORDER BY id",
                        ids).fetchall()
    assert len(rows) == 4
    assert all(r[2] == "completed" and r[4] == r[5] == 20 for r in rows)
    assert sorted((r[1], r[3]) for r in rows) == [("dense", 36000), ("dense", 36001),
                                                  ("topk", 36000), ("topk", 36001)]
    # 2 cores -> at most 2 at once, 1 thread each
    assert {json.loads(r[6])["train"]["threads"] for r in rows} == {m["threads_per_run"]}
    assert m["jobs"] * m["threads_per_run"] <= m["cores"]
    assert m["verdict"] in ("adopt", "defer", "never") and f"verdict: {m['verdict']}" in stdout
    findings = (out / "findings.md").read_text()
    assert findings.count("\n## ") == 7 and "\n## Plots" in findings
    assert m["plots"] == ["routing-analysis.png", "expert-by-class.png", "loss-curves.png"]
    for name in m["plots"]:
        assert_readable_png(out / name)
        assert f"![{name}]({name})" in findings


def test_the_pair_of_each_seed_saw_the_same_batches_and_schedule(compared):
    _, _, m, conn, _ = compared
    pairs = list(zip(m["baseline"]["run_ids"], m["variant"]["run_ids"], strict=True))
    hashes = []
    for base_id, var_id in pairs:
        base_hash, var_hash = (series(conn, base_id, "data/batch_hash"),
                               series(conn, var_id, "data/batch_hash"))
        assert [s for s, _ in base_hash] == list(range(1, 21))
        assert base_hash == var_hash
        assert series(conn, base_id, "train/lr") == series(conn, var_id, "train/lr")
        # the same evaluation set: evaluated at the same steps on the same windows
        assert [s for s, _ in series(conn, base_id, "val/ppl")] == \
            [s for s, _ in series(conn, var_id, "val/ppl")]
        hashes.append([v for _, v in base_hash])
    # and the seeds really differ from each other
    assert hashes[0] != hashes[1]
    # the model is what differs: the losses are not the same
    assert series(conn, pairs[0][0], "train/loss") != series(conn, pairs[0][1], "train/loss")


def test_manifest_numbers_equal_what_the_store_holds(compared):
    _, _, m, conn, _ = compared
    assert m["seeds"] == [36000, 36001] and m["steps"] == 20
    assert (m["num_experts"], m["top_k"], m["moe_layer_index"], m["alpha_aux_loss"]) == \
        (4, 2, 1, 0.01)
    assert m["dense_baseline"]["params"] == m["baseline"]["params"]
    assert m["moe_variant"]["experts_dead_count"] == m["variant"]["experts_dead_count"]["mean"]
    # two seeds can never adopt (seed 002 asks for three)
    assert m["verdict_for_grammar_tutor"] == m["verdict"] in ("defer", "never")
    for role in ("baseline", "variant"):
        entry = m[role]
        for run, run_id in zip(entry["runs"], entry["run_ids"], strict=True):
            params = conn.execute("SELECT params_total, params_active, ended_at - started_at"
                                  " FROM runs WHERE id = ?", (run_id,)).fetchone()
            assert (run["params_total"], run["params_active"]) == params[:2]
            assert run["wall_time_s"] == pytest.approx(params[2])
            ppl = series(conn, run_id, "val/ppl")[-1][1]
            assert run["final_val_ppl"] == pytest.approx(ppl)
            # the tail: the last ceil(10%) of 20 logged steps = 2
            losses = [v for _, v in series(conn, run_id, "train/loss")][-2:]
            assert run["final_train_loss"] == pytest.approx(sum(losses) / 2)
            step_s = sum(v for _, v in series(conn, run_id, "sys/step_s"))
            assert run["train_time_s"] == pytest.approx(step_s)
        values = [r["final_val_ppl"] for r in entry["runs"]]
        assert entry["final_val_ppl"]["mean"] == pytest.approx(sum(values) / 2)
        assert entry["final_val_ppl"]["std"] == pytest.approx(abs(values[0] - values[1])
                                                             / math.sqrt(2))
    for run, run_id in zip(m["variant"]["runs"], m["variant"]["run_ids"], strict=True):
        usage = [v for _, v in series(conn, run_id, "moe/usage_std")][-2:]
        assert run["load_balance_std"] == pytest.approx(sum(usage) / 2)
        assert run["dead_experts"] == series(conn, run_id, "moe/dead_experts")[-1][1]
    dense_ffn = 3 * 64 * 256
    extra = m["variant"]["params"] - m["baseline"]["params"]
    assert extra == 4 * dense_ffn + 64 * 4 - dense_ffn  # 4 experts + router replace one FFN


def test_analysis_table_is_filled_and_exports_as_csv(compared):
    home, _, m, conn, _ = compared
    var_id = m["variant"]["run_ids"][0]
    rows = conn.execute("SELECT step, name, payload FROM analysis WHERE run_id = ?",
                        (var_id,)).fetchall()
    assert [(s, n) for s, n, _ in rows] == [(20, "routing/L1")]
    payload = json.loads(rows[0][2])
    assert sum(payload["histogram"]) == payload["tokens"] * 2
    assert payload["tokens"] == m["eval_windows"] * m["seq_len"]
    dense_id = m["baseline"]["run_ids"][0]
    assert conn.execute("SELECT COUNT(*) FROM analysis WHERE run_id = ?",
                        (dense_id,)).fetchone()[0] == 0

    out = moedesk("analysis", str(var_id), "--csv", home=home, check=True)
    table = list(csv.DictReader(io.StringIO(out.stdout)))
    hist = [r for r in table if r["kind"] == "histogram"]
    assert [int(r["count"]) for r in hist] == payload["histogram"]
    by_class = [r for r in table if r["kind"] == "by-class"]
    assert len(by_class) == 4 * len(payload["classes"])
    noun = payload["classes"].index("noun")
    assert [int(r["count"]) for r in by_class if r["category"] == "noun"] == \
        [row[noun] for row in payload["by_class"]]
    only = moedesk("analysis", str(var_id), "--csv", "--kind", "by-class", home=home, check=True)
    assert {r["kind"] for r in csv.DictReader(io.StringIO(only.stdout))} == {"by-class"}

    shown = moedesk("analysis", str(var_id), home=home, check=True)
    assert "per-expert assignments" in shown.stdout and "noun" in shown.stdout
    refused = moedesk("analysis", str(dense_id), home=home)
    assert refused.returncode == 2 and "no routing analysis" in refused.stderr


def test_an_unfair_pair_is_refused_before_anything_runs(tmp_path):
    variant = tmp_path / "v.toml"
    variant.write_text((REPO / MOE).read_text().replace("lr = 3e-3", "lr = 1e-3"))
    home = tmp_path / "home"
    result = moedesk("compare", DENSE, str(variant), "--steps", "5", home=home)
    assert result.returncode == 2
    assert "train.lr: 0.003 vs 0.001" in result.stderr
    assert "outside [model], [moe] and kind" in result.stderr
    assert not (Path(home) / "moedesk.db").exists()
