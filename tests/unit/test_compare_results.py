"""Manifest and findings from runs written into a real store: numbers equal the store's."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from moedesk.compare import compare_runs, decide, find_manifests, load, table_rows, write_outputs
from moedesk.compare.finals import tail_count
from moedesk.compare.results import CompareError
from moedesk.compare.verdict import Cost
from moedesk.profiles import load_profile, profile_to_dict
from moedesk.store import connect_writer, open_reader
from moedesk.store import runs as store_runs
from moedesk.store.ingest import Batch, write_batch

REPO = Path(__file__).resolve().parents[2]
STEPS = 40  # logged every 2 steps: 20 logged steps, a tail of 2


def classes() -> list[str]:
    from moedesk.train.grammar import LABEL_NAMES

    return list(LABEL_NAMES)


def routing_payload(layer: int, specialised: bool) -> dict:
    """4 experts, 14 classes; `specialised`: class c goes to experts c % 4 and (c+1) % 4."""
    names = classes()
    class_tokens = [100] * len(names)
    by_class = [[0] * len(names) for _ in range(4)]
    for c in range(len(names)):
        for e in range(4):
            if specialised:
                by_class[e][c] = 100 if e in (c % 4, (c + 1) % 4) else 0
            else:
                by_class[e][c] = 50
    histogram = [sum(row) for row in by_class]
    return {"layer": layer, "split": "val", "windows": 4, "tokens": sum(class_tokens),
            "num_experts": 4, "top_k": 2, "histogram": histogram, "first_choice": [350] * 4,
            "classes": names, "class_tokens": class_tokens, "by_class": by_class,
            "frequency_buckets": ["q1", "q2", "q3", "q4"], "bucket_tokens": [350] * 4,
            "by_frequency": [[175] * 4 for _ in range(4)]}


def fake_run(db, home: Path, profile_file: str, seed: int, ppl: float, step_s: float,
             params: tuple[int, int]) -> int:
    profile = load_profile(REPO / "profiles" / profile_file,
                           {"seed": seed, "train.steps": STEPS, "train.warmup_steps": 4,
                            "train.log_every": 2})
    run_id, _ = store_runs.create_run(db.conn, config=profile_to_dict(profile),
                                   profile_path=profile_file, home=home)
    store_runs.mark_running(db.conn, run_id, 1)
    store_runs.record_started_event(db.conn, run_id, {"total_steps": STEPS, "device": "cpu",
                                                      "params": {"total": params[0],
                                                                 "active": params[1]}})
    batch = Batch()
    for step in range(2, STEPS + 1, 2):
        values = {"train/loss": 3.0 - step / 100 + seed % 7 / 100, "train/lr": 1e-3,
                  "sys/step_s": step_s * (1 + step / 1000)}
        if profile.kind == "topk":
            values.update({"moe/usage_std": 0.01 * step / 10, "moe/imbalance": 0.1,
                           "moe/dead_experts": float(step == STEPS), "moe/aux_loss": 0.0101,
                           "route/latency_us": 2.0})
            batch.add_expert_load(step, {1: [step, 2 * step, 3 * step, 4 * step]}, time.time())
        batch.add_metrics(step, values, time.time())
    for step in (20, STEPS):
        val = math.log(ppl) + (0.5 if step == 20 else 0.0)
        batch.add_metrics(step, {"val/loss": val, "val/ppl": math.exp(val)}, time.time())
        if profile.kind == "topk":
            batch.analysis.append((step, "routing/L1",
                                   json.dumps(routing_payload(1, step == STEPS)), time.time()))
    write_batch(db.conn, run_id, batch)
    store_runs.finish_run(db.conn, run_id, "completed", 0, None)
    return run_id


@pytest.fixture
def compared(home):
    db = connect_writer(home / "moedesk.db")
    base_ppl, var_ppl = [10.0, 10.4, 9.8], [10.1, 10.3, 9.95]
    base_ids, var_ids = [], []
    for i, seed in enumerate((36000, 36001, 36002)):
        base_ids.append(fake_run(db, home, "lab_dense.toml", seed, base_ppl[i], 0.010,
                                 (1000, 1000)))
        var_ids.append(fake_run(db, home, "lab_moe.toml", seed, var_ppl[i], 0.013,
                                (2000, 1300)))
    db.close()
    return home, base_ids, var_ids, base_ppl, var_ppl


def test_manifest_numbers_equal_what_the_store_holds(compared):
    home, base_ids, var_ids, base_ppl, var_ppl = compared
    m = compare_runs(home, base_ids, var_ids)
    assert m["seeds"] == [36000, 36001, 36002] and m["seed"] == 36000 and m["steps"] == STEPS
    assert (m["num_experts"], m["top_k"], m["moe_layer_index"], m["alpha_aux_loss"]) == \
        (4, 2, 1, 0.01)
    assert m["moe_layer_indices"] == [1]
    base, var = m["baseline"], m["variant"]
    assert base["run_ids"] == base_ids and var["run_ids"] == var_ids
    assert (base["params"], base["params_active"], var["params"], var["params_active"]) == \
        (1000, 1000, 2000, 1300)
    assert base["final_val_ppl"]["values"] == pytest.approx(base_ppl)
    assert var["final_val_ppl"]["mean"] == pytest.approx(sum(var_ppl) / 3)
    n_tail = tail_count(STEPS // 2)
    assert n_tail == 2
    for entry, step_s in ((base, 0.010), (var, 0.013)):
        run = entry["runs"][1]
        tail_steps = range(STEPS - 2 * (n_tail - 1), STEPS + 1, 2)
        expect_loss = sum(3.0 - s / 100 + 36001 % 7 / 100 for s in tail_steps) / n_tail
        assert run["final_train_loss"] == pytest.approx(expect_loss)
        # each sys/step_s value covers the 2 steps since the previous logged step
        expect_time = sum(2 * step_s * (1 + s / 1000) for s in range(2, STEPS + 1, 2))
        assert run["train_time_s"] == pytest.approx(expect_time)
        assert run["step_time_s"] == pytest.approx(expect_time / STEPS)
        with open_reader(home) as reader:
            info = reader.run(run["run_id"])
        assert run["wall_time_s"] == pytest.approx(info.ended_at - info.started_at)
    vrun = var["runs"][0]
    assert vrun["load_balance_std"] == pytest.approx(
        sum(0.01 * s / 10 for s in tail_steps) / n_tail)
    assert vrun["dead_experts"] == 1.0
    pooled = [sum(k * s for s in tail_steps) for k in (1, 2, 3, 4)]
    assert vrun["expert_shares"]["1"] == pytest.approx([p / sum(pooled) for p in pooled])
    assert var["load_balance_stddev"]["mean"] == pytest.approx(vrun["load_balance_std"])
    assert var["experts_dead_count"]["values"] == [1.0, 1.0, 1.0]
    # the routing summary reads the newest analysis row (the specialised one)
    # each class goes to 2 of 4 experts: I = ln 4 - ln 2, half of H(expert) = ln 4
    assert vrun["routing"]["1"]["class"]["u"] == pytest.approx(0.5, abs=0.01)
    assert vrun["routing"]["1"]["frequency"]["u"] == pytest.approx(0.0, abs=1e-9)
    assert vrun["routing"]["1"]["pattern"] == "word class"


def test_manifest_has_seed_002s_own_keys(compared):
    home, base_ids, var_ids, base_ppl, var_ppl = compared
    m = compare_runs(home, base_ids, var_ids)
    for key in ("seed", "lab", "num_experts", "top_k", "moe_layer_index", "alpha_aux_loss",
                "steps", "dense_baseline", "moe_variant", "verdict_for_grammar_tutor",
                "lesson_notes"):
        assert key in m, key
    base, var = m["baseline"], m["variant"]
    assert m["dense_baseline"] == {"params": 1000,
                                   "final_val_ppl": pytest.approx(sum(base_ppl) / 3),
                                   "wall_time_s": pytest.approx(base["wall_time_s"]["mean"])}
    assert set(m["moe_variant"]) == {"params", "final_val_ppl", "wall_time_s",
                                     "load_balance_stddev", "experts_dead_count"}
    assert m["moe_variant"]["params"] == 2000
    assert m["moe_variant"]["final_val_ppl"] == pytest.approx(sum(var_ppl) / 3)
    assert m["moe_variant"]["load_balance_stddev"] == var["load_balance_stddev"]["mean"]
    assert m["moe_variant"]["experts_dead_count"] == 1.0
    assert m["verdict_for_grammar_tutor"] == m["verdict"] in ("defer", "never")
    assert m["lesson_notes"].startswith("Do not adopt it")


@pytest.mark.slow
def test_compare_plots_are_written_beside_the_manifest(compared, tmp_path):
    from moedesk.plots import compare_pngs, pooled_routing
    from tests.images import assert_readable_png

    home, base_ids, var_ids, _, _ = compared
    m = compare_runs(home, base_ids, var_ids)
    with open_reader(home) as reader:
        paths = compare_pngs(reader, m, tmp_path)
        pooled = pooled_routing(reader, var_ids)
    assert [p.name for p in paths] == ["routing-analysis.png", "expert-by-class.png",
                                       "loss-curves.png"]
    for path in paths:
        assert_readable_png(path)
    # the MoE model's seeds are pooled: three runs' counts added up
    assert pooled[1]["runs"] == 3
    assert pooled[1]["histogram"] == [3 * c for c in routing_payload(1, True)["histogram"]]


def test_verdict_in_the_manifest_is_the_rule_applied_to_the_stored_numbers(compared):
    home, base_ids, var_ids, base_ppl, var_ppl = compared
    m = compare_runs(home, base_ids, var_ids)
    expected = decide(base_ppl, var_ppl, Cost(1000, m["baseline"]["step_time_s"]["mean"]),
                      Cost(2000, m["variant"]["step_time_s"]["mean"]))
    # no gain (the variant is worse on average, within noise) at 2x the parameters: never
    assert expected.decision == "never"
    assert m["verdict"] == "never"
    assert m["verdict_detail"]["gain"] == pytest.approx(expected.gain)
    assert m["verdict_detail"]["noise"] == pytest.approx(expected.noise)
    assert "never" in m["lesson_notes"]


def test_findings_answer_the_six_questions_with_the_measured_numbers(compared, tmp_path):
    home, base_ids, var_ids, *_ = compared
    m = compare_runs(home, base_ids, var_ids)
    manifest_path, findings_path = write_outputs(m, tmp_path / "out")
    text = findings_path.read_text()
    for n in range(1, 7):
        assert f"## {n}. " in text
    v = m["verdict_detail"]
    assert f"{v['gain']:+.4g}" in text and f"{v['threshold']:.4g}" in text
    assert "2.00x" in text  # parameters, from the stored counts
    assert "**never**" in text
    assert "word class" in text
    assert f"{m['variant']['load_balance_stddev']['mean']:.4g}" in text
    # the manifest round-trips and drives the compare view
    loaded = load(manifest_path)
    assert loaded == json.loads(json.dumps(m))
    rows = {r[0]: r for r in table_rows(loaded)}
    assert rows["parameters"][3] == "2.00x"
    assert rows["final val ppl"][1].startswith(f"{m['baseline']['final_val_ppl']['mean']:.4g}")


def test_find_manifests_and_load_errors(home, tmp_path):
    assert find_manifests(home) == []
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(CompareError, match="not a moedesk comparison manifest"):
        load(bad)
    folder = home / "compare" / "a-vs-b"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    assert find_manifests(home) == [folder / "manifest.json"]


def test_pairs_must_share_their_seed(compared):
    home, base_ids, var_ids, *_ = compared
    with pytest.raises(CompareError, match="must share its seed"):
        compare_runs(home, base_ids, list(reversed(var_ids)))
    with pytest.raises(CompareError, match="as many"):
        compare_runs(home, base_ids, var_ids[:2])


def test_runs_picked_in_any_order_are_paired_into_the_comparison(compared):
    from moedesk.compare import pair_runs, verdict_for_runs
    from moedesk.store import Reader
    from moedesk.tui.screens.compare import verdict_text

    home, base_ids, var_ids, *_ = compared
    reader = Reader(home / "moedesk.db")
    picked = [var_ids[2], base_ids[0], var_ids[0], base_ids[2], base_ids[1], var_ids[1]]
    assert pair_runs(reader, picked) == (base_ids, var_ids)
    manifest = verdict_for_runs(reader, picked)
    assert manifest["verdict"] == compare_runs(home, base_ids, var_ids)["verdict"]
    assert verdict_text(reader, picked).startswith(f"verdict: {manifest['verdict']}: ")
    # not a protocol comparison: a seed without its partner, or one profile only
    assert pair_runs(reader, base_ids + var_ids[:2]) is None
    assert pair_runs(reader, base_ids) is None
    assert verdict_text(reader, base_ids) == ""
