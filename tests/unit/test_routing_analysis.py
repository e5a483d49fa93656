"""Routing analysis: recorded in the trainer, stored via the ingest path, read back, scored."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from moedesk.profiles import load_profile, profile_to_dict
from moedesk.runner.commit import Committer
from moedesk.runner.ingest import Ingestor
from moedesk.stats.routing import explained_share, mutual_information, specialization
from moedesk.store import Reader, connect_writer
from moedesk.store import runs as store_runs
from moedesk.train import loop
from moedesk.train.analysis import (
    HASH_MODULUS,
    RoutingAnalysis,
    batch_fingerprint,
    frequency_buckets,
)
from moedesk.train.data import LMData
from moedesk.train.emit import ListEmitter

REPO = Path(__file__).resolve().parents[2]
FAST = {"train.steps": 6, "train.warmup_steps": 1, "train.eval_every": 3,
        "train.eval_batches": 2, "train.batch_size": 4, "data.seq_len": 16,
        "model.max_seq_len": 16, "data.grammar_sentences": 300, "train.threads": 1}


def profile(name: str, **overrides):
    return load_profile(REPO / "profiles" / name, {**FAST, **overrides})


# ---- the data fingerprint -------------------------------------------------------------------
def test_batch_fingerprint_tells_batches_and_their_order_apart():
    x = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    h = batch_fingerprint(x)
    assert h.dtype == torch.long and 0 <= int(h) < HASH_MODULUS
    assert int(batch_fingerprint(x.clone())) == int(h)
    assert int(batch_fingerprint(x.flip(0))) != int(h)  # same tokens, other order
    changed = x.clone()
    changed[2, 5] = (changed[2, 5] + 1) % 256
    assert int(batch_fingerprint(changed)) != int(h)
    y = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(1))
    ab, ba = batch_fingerprint(y, batch_fingerprint(x)), batch_fingerprint(x, batch_fingerprint(y))
    assert int(ab) != int(ba)  # micro-batch order matters too
    assert float(ab) == int(ab)  # exact as a float64 metric


def test_frequency_buckets_split_the_training_mass_most_frequent_first():
    tokens = torch.tensor([0] * 50 + [1] * 25 + [2] * 15 + [3] * 10)
    buckets = frequency_buckets(tokens, vocab_size=6)
    assert buckets.tolist() == [0, 2, 3, 3, 3, 3]  # 4 and 5 never occur: last bucket


# ---- recorded in the trainer ---------------------------------------------------------------
def test_recorded_routing_is_what_the_router_chose_on_the_validation_windows():
    p = profile("tiny_topk.toml")
    torch.manual_seed(0)
    model = loop.build_model(p)
    data = LMData(p.data, p.seed, p.train.batch_size, p.model.vocab_size)
    n_windows = p.train.eval_batches * p.train.batch_size
    analysis = RoutingAnalysis(model, data, n_windows, p.model.vocab_size)
    assert analysis.active and len(analysis.layers) == 2
    inputs: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    hooks = [ffn.register_forward_pre_hook(
        lambda mod, args: inputs[mod.layer_idx].append(args[0].detach()))
        for ffn in model.moe_ffns()]
    val_batches = data.val_batches(p.train.eval_batches)
    with analysis.recording():
        loop.evaluate(model, val_batches, lambda: torch.autocast("cpu", enabled=False))
    for hook in hooks:
        hook.remove()
    # nothing patched, and the recording hooks are gone again
    assert all("route" not in vars(ffn) and not ffn.router._forward_hooks
               for ffn in model.moe_ffns())
    payloads = analysis.payloads()
    assert set(payloads) == {"routing/L0", "routing/L1"}
    labels = torch.cat([data.window_labels("val", s) for s in
                        data.val_starts(n_windows).split(p.train.batch_size)]).flatten()
    for ffn in model.moe_ffns():
        payload = payloads[f"routing/L{ffn.layer_idx}"]
        x_TD = torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs[ffn.layer_idx]])
        ids_TK = ffn.route(x_TD)[0]
        E, K = ffn.num_experts, ffn.top_k
        assert payload["tokens"] == n_windows * p.data.seq_len == ids_TK.shape[0]
        assert payload["histogram"] == torch.bincount(ids_TK.flatten(), minlength=E).tolist()
        assert payload["first_choice"] == torch.bincount(ids_TK[:, 0], minlength=E).tolist()
        assert sum(payload["histogram"]) == payload["tokens"] * K
        assert payload["class_tokens"] == torch.bincount(
            labels.long(), minlength=len(data.label_names)).tolist()
        assert [sum(row) for row in payload["by_class"]] == payload["histogram"]
        assert [sum(row) for row in payload["by_frequency"]] == payload["histogram"]
        # one expert, one class: count the tokens of that class the router sent there
        c = data.label_names.index("noun")
        expect = int(((ids_TK == 1).any(1) & (labels == c)).sum())
        assert payload["by_class"][1][c] == expect
    # a second call without recording has nothing (no stale results)
    assert analysis.payloads() == {}


@pytest.mark.slow
def test_topk_runs_emit_analysis_at_each_eval_and_dense_runs_do_not(tmp_path):
    topk = ListEmitter()
    assert loop.train_lm(profile("tiny_topk.toml"), tmp_path / "t", topk) == "completed"
    events = [e for e in topk.events if e["type"] == "analysis"]
    assert sorted((e["step"], e["name"]) for e in events) == [
        (3, "routing/L0"), (3, "routing/L1"), (6, "routing/L0"), (6, "routing/L1")]
    dense = ListEmitter()
    assert loop.train_lm(profile("tiny_dense.toml"), tmp_path / "d", dense) == "completed"
    assert not [e for e in dense.events if e["type"] == "analysis"]
    hashes = [e["values"]["data/batch_hash"] for e in dense.events
              if e["type"] == "metrics" and "data/batch_hash" in e["values"]]
    assert len(hashes) == 6 and len(set(hashes)) == 6


@pytest.mark.slow
def test_same_seed_dense_and_topk_see_the_same_batches(tmp_path):
    runs = {}
    for name in ("tiny_dense.toml", "tiny_topk.toml"):
        emitter = ListEmitter()
        p = profile(name, seed=5, **{"data.grammar_sentences": 400})
        loop.train_lm(p, tmp_path / name, emitter)
        runs[name] = [(e["step"], e["values"]["data/batch_hash"], e["values"]["train/lr"])
                      for e in emitter.events if e["type"] == "metrics"
                      and "data/batch_hash" in e["values"]]
    assert runs["tiny_dense.toml"] == runs["tiny_topk.toml"]


# ---- stored through the supervisor's ingest path -------------------------------------------
def test_analysis_events_are_stored_read_back_and_truncated_on_resume(home):
    db = connect_writer(home / "moedesk.db")
    config = profile_to_dict(profile("tiny_topk.toml"))
    run_id, _ = store_runs.create_run(db.conn, config=config, profile_path="p", home=home)
    ingestor = Ingestor(Committer(db.conn, run_id, home / str(run_id), keep=0))
    payload = {"layer": 1, "histogram": [1, 2], "top_k": 1}
    for step in (3, 6):
        line = json.dumps({"type": "analysis", "step": step, "wall": 1.0,
                           "name": "routing/L1", "payload": {**payload, "step_seen": step}})
        ingestor.feed_line(line)
    ingestor.commit()
    reader = Reader(home / "moedesk.db")
    assert reader.analysis_names(run_id) == ["routing/L1"]
    assert reader.analysis_steps(run_id, "routing/L1") == [3, 6]
    assert reader.latest_routing(run_id) == {1: (6, {**payload, "step_seen": 6})}
    assert reader.latest_routing(run_id, step=3) == {1: (3, {**payload, "step_seen": 3})}
    assert reader.latest_analysis(run_id, "routing_") == {}  # "_" is no LIKE wildcard here
    store_runs.truncate_for_resume(db.conn, run_id, 4, "ckpt.pt")
    assert reader.analysis_steps(run_id, "routing/L1") == [3]
    assert reader.latest_routing(run_id) == {1: (3, {**payload, "step_seen": 3})}
    db.close()


# ---- scoring -------------------------------------------------------------------------------
def test_mutual_information_zero_for_independence_and_full_for_a_mapping():
    info, bias = mutual_information([[50, 50, 50], [50, 50, 50]])
    assert info == pytest.approx(0.0, abs=1e-12) and bias > 0
    assert explained_share([[100, 0, 0], [0, 100, 0], [0, 0, 100]])["u"] == pytest.approx(
        1.0 - (2 * 2 / 600) / math.log(3))
    assert explained_share([[0, 0], [0, 0]])["u"] == 0.0


def test_specialization_names_the_favourite_class_of_each_expert():
    payload = {"layer": 1, "tokens": 300, "top_k": 1, "histogram": [100, 200],
               "classes": ["a", "b", "c"], "class_tokens": [100, 100, 100],
               "by_class": [[90, 5, 5], [10, 95, 95]],
               "by_frequency": [[50, 50], [100, 100]]}
    spec = specialization(payload)
    assert spec["per_expert"][0]["top_class"] == "a"
    assert spec["per_expert"][0]["top_class_lift"] == pytest.approx(0.9 / (100 / 300))
    assert spec["shares"] == pytest.approx([1 / 3, 2 / 3])
    assert spec["frequency"]["u"] == 0.0 and spec["pattern"] == "word class"
