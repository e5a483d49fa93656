"""The ternary training loop: it learns, logs the protocol's events, stops, resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moedesk.profiles import load_profile, parse_overrides
from moedesk.train.checkpoint import list_checkpoints, load_checkpoint
from moedesk.train.emit import ListEmitter
from moedesk.train.grammar import grammar_corpus
from moedesk.train.stopflag import StopFlag
from moedesk.train.ternary.data import encode_windows, load_samples
from moedesk.train.ternary.loop import train_ternary
from moedesk.train.ternary.trits import write_trit_samples

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "profiles" / "tiny_ternary.toml"
# wall-clock figures differ between runs; everything else must match exactly
TIMING = {"route/latency_us", "route/us_per_sample", "train/samples_per_s", "sys/step_s",
          "sys/rss_mb"}


def _profile(*overrides: str):
    return load_profile(TINY, parse_overrides(list(overrides)))


def _run(profile, run_dir: Path, **kw) -> tuple[str, ListEmitter]:
    emitter = ListEmitter()
    status = train_ternary(profile, run_dir, emitter, **kw)
    return status, emitter


def _metrics(emitter: ListEmitter) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for event in emitter.events:
        if event["type"] == "metrics":
            out.setdefault(event["step"], {}).update(event["values"])
    return out


def _of_type(emitter: ListEmitter, kind: str) -> list[dict]:
    return [e for e in emitter.events if e["type"] == kind]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiny")
    status, emitter = _run(_profile(), run_dir)
    return status, emitter, run_dir


@pytest.mark.slow
def test_tiny_profile_learns_well_beyond_chance(tiny_run):
    status, emitter, _ = tiny_run
    assert status == "completed"
    metrics = _metrics(emitter)
    accuracy = {step: v["ff/accuracy"] for step, v in metrics.items() if "ff/accuracy" in v}
    assert sorted(accuracy) == [0, 20, 40, 60]
    assert abs(accuracy[0] - 0.5) < 0.1  # the untrained bank is near chance...
    assert accuracy[60] > 0.75  # ...the trained one is not (ties count half)
    assert accuracy[60] > accuracy[0] + 0.2
    late = [metrics[s]["ff/goodness_delta"] for s in range(41, 61)]
    assert sum(late) / len(late) > 0.5  # seed 000's "healthy" goodness delta


def test_events_follow_the_protocol(tiny_run):
    _, emitter, run_dir = tiny_run
    started, finished = _of_type(emitter, "started"), _of_type(emitter, "finished")
    assert len(started) == 1 and started[0]["total_steps"] == 60 and started[0]["step"] == 0
    assert started[0]["params"]["total"] > started[0]["params"]["active"] > 0
    assert finished == [{"type": "finished", "step": 60, "status": "completed",
                         "reason": "trained 60 steps"}]
    metrics = _metrics(emitter)
    for name in ("ff/goodness_pos", "ff/goodness_neg", "ff/goodness_delta", "route/latency_us",
                 "route/us_per_sample", "ff/pairs_updated", "route/active_experts",
                 "train/samples_per_s", "sys/step_s", "sys/rss_mb", "moe/imbalance",
                 "moe/entropy_norm", "moe/usage_std", "moe/dead_experts", "moe/L0/imbalance"):
        assert name in metrics[60], name
    v = metrics[60]
    assert v["ff/goodness_delta"] == pytest.approx(v["ff/goodness_pos"] - v["ff/goodness_neg"])
    assert 0 <= v["moe/imbalance"] <= 1 and v["route/latency_us"] > 0
    loads = _of_type(emitter, "expert_load")
    assert len(loads) == 60  # log_every = 1
    counts = loads[-1]["loads"]["0"]
    assert len(counts) == 27 and sum(counts) == 32 * 4  # batch x K pairs in one step
    ckpts = _of_type(emitter, "checkpoint")
    assert [c["step"] for c in ckpts] == [60]
    assert ckpts[0]["sha256"] == list_checkpoints(run_dir)[-1].sha256


def test_checkpoint_holds_every_weight_and_counter(tiny_run):
    _, _, run_dir = tiny_run
    state = load_checkpoint(list_checkpoints(run_dir)[-1].path)
    model = state["model"]
    assert [tuple(w.shape) for w in model["experts"]["weights"]] == [(27, 48, 48), (27, 48, 32)]
    assert all(w.dtype == torch.int8 for w in model["experts"]["weights"])
    assert model["router"]["spec_ER"].shape == (27, 48)
    assert float(model["router"]["counts_E"].sum()) > 0
    assert state["data"]["batch"] == 60 and state["config"]["kind"] == "ternary"


@pytest.mark.slow
def test_resume_continues_bit_identically(tmp_path):
    profile = _profile("train.steps=40", "train.eval_every=10", "train.log_every=3",
                       "checkpoint.every=0")
    status, whole = _run(profile, tmp_path / "whole")
    assert status == "completed"
    status, first = _run(profile, tmp_path / "split", stop_at=20)
    assert status == "stopped"
    assert _of_type(first, "finished")[0]["reason"] == "reached --stop-at 20"
    ckpt = list_checkpoints(tmp_path / "split")[-1]
    assert ckpt.step == 20
    status, second = _run(profile, tmp_path / "split", resume=ckpt.path)
    assert status == "completed"
    assert _of_type(second, "started")[0]["resumed_from"] == 20

    def comparable(emitter, lo):
        return {s: {k: v for k, v in vals.items() if k not in TIMING}
                for s, vals in _metrics(emitter).items() if s > lo}

    assert comparable(second, 20) == comparable(whole, 20)
    assert [e["loads"] for e in _of_type(second, "expert_load")] == [
        e["loads"] for e in _of_type(whole, "expert_load") if e["step"] > 20]
    a = load_checkpoint(list_checkpoints(tmp_path / "whole")[-1].path)["model"]
    b = load_checkpoint(list_checkpoints(tmp_path / "split")[-1].path)["model"]
    assert all(torch.equal(x, y) for x, y in zip(a["experts"]["weights"],
                                                 b["experts"]["weights"], strict=True))
    assert torch.equal(a["router"]["counts_E"], b["router"]["counts_E"])


@pytest.mark.slow
def test_stop_request_finishes_the_step_checkpoints_and_reports_stopped(tmp_path):
    stop = StopFlag()

    class StopAtFive(ListEmitter):
        def metrics(self, step, values):
            super().metrics(step, values)
            if step == 5:
                stop.request("received SIGTERM")

    emitter = StopAtFive()
    status = train_ternary(_profile(), tmp_path, emitter, stop=stop)
    assert status == "stopped"
    assert _of_type(emitter, "finished")[-1] == {"type": "finished", "step": 5,
                                                 "status": "stopped",
                                                 "reason": "received SIGTERM"}
    assert [c["step"] for c in _of_type(emitter, "checkpoint")] == [5]


@pytest.mark.slow
def test_epochs_early_stopping_and_epoch_checkpoints(tmp_path):
    # ~12 batches per epoch; with patience 1 the first epoch without a better held-out
    # accuracy ends the run long before its 2000 steps
    profile = _profile("data.grammar_sentences=120", "train.steps=2000", "train.eval_every=0",
                       "train.log_every=50", "ternary.early_stopping_patience=1",
                       "ternary.checkpoint_every_epochs=2")
    status, emitter = _run(profile, tmp_path)
    assert status == "completed"
    finished = _of_type(emitter, "finished")[0]
    assert finished["reason"].startswith("early stopping: no better held-out accuracy")
    train, _ = load_samples(profile)
    per_epoch = len(train) // 32
    assert finished["step"] % per_epoch == 0 and finished["step"] < 2000
    evals = sorted(s for s, v in _metrics(emitter).items() if "ff/accuracy" in v)
    assert evals == [0] + list(range(per_epoch, finished["step"] + 1, per_epoch))
    ckpt_steps = [c["step"] for c in _of_type(emitter, "checkpoint")]
    assert ckpt_steps[:-1] == list(range(2 * per_epoch, finished["step"], 2 * per_epoch))
    assert ckpt_steps[-1] == finished["step"]


@pytest.mark.slow
def test_trit_file_and_text_sources(tmp_path):
    text = grammar_corpus(7, 300)[0].tobytes()
    samples = list(encode_windows(text, 48, "balanced"))
    write_trit_samples(tmp_path / "s.bin", [s[:40] for s in samples])  # short: zero-padded
    status, emitter = _run(_profile("data.source=trits", f"data.path={tmp_path / 's.bin'}",
                                    "train.steps=5"), tmp_path / "a")
    assert status == "completed"
    (tmp_path / "t.txt").write_bytes(text)
    status, _ = _run(_profile("data.source=text", f"data.path={tmp_path / 't.txt'}",
                              "ternary.encoding=letters", "train.steps=5"), tmp_path / "b")
    assert status == "completed"


def test_bad_trit_file_fails_with_a_clear_reason(tmp_path):
    path = tmp_path / "bad.bin"
    write_trit_samples(path, [torch.zeros(48, dtype=torch.int8)] * 40)
    path.write_bytes(path.read_bytes()[:-5])
    status, emitter = _run(_profile("data.source=trits", f"data.path={path}"), tmp_path)
    assert status == "failed"
    reason = _of_type(emitter, "finished")[0]["reason"]
    assert "truncated" in reason and str(path) in reason


@pytest.mark.slow
def test_the_documented_reference_rule_runs_and_changes_weights(tmp_path):
    status, emitter = _run(_profile("ternary.hebbian_rule=reference", "train.steps=10"), tmp_path)
    assert status == "completed"
    assert sum(v.get("ff/weights_changed", 0) for v in _metrics(emitter).values()) > 0


def _analysis(emitter: ListEmitter) -> dict[int, dict]:
    return {e["step"]: e["payload"] for e in _of_type(emitter, "analysis")
            if e["name"] == "routing/L0"}


def test_evaluation_logs_seed_000s_goodness_the_baselines_and_a_routing_analysis(tiny_run):
    from moedesk.stats.routing import class_expert_shares, specialization

    _, emitter, _ = tiny_run
    metrics = _metrics(emitter)
    assert {"ff/baseline/template", "ff/baseline/frequency", "ff/baseline/bigram"} <= set(
        metrics[0])
    assert not any("ff/baseline/template" in metrics[s] for s in (20, 40, 60))
    assert metrics[0]["ff/baseline/frequency"] > 0.9  # corrupt negatives: position by position
    analysis = _analysis(emitter)
    assert sorted(analysis) == [0, 20, 40, 60]
    payload = analysis[60]
    windows, k = payload["windows"], payload["top_k"]
    assert windows == 8 * 32 and k == 4 and payload["unit"] == "window"
    assert sum(payload["histogram"]) == windows * k and sum(payload["first_choice"]) == windows
    for c, total in enumerate(payload["class_tokens"]):
        assert sum(row[c] for row in payload["by_class"]) == pytest.approx(k * total)
    assert sum(payload["class_tokens"]) == windows * 8  # 48 trits = 8 bytes per window
    assert sum(payload["bucket_tokens"]) == windows
    assert payload["sources"] == ["grammar"] and sum(map(sum, payload["by_source"])) == windows * k
    assert sum(payload["cluster_histogram"]) == windows * 2  # 2 of 3 clusters per window
    for e, count in enumerate(payload["histogram"]):
        assert (payload["goodness_pos"][e] is None) == (count == 0)
    assert payload["test_goodness"] == pytest.approx(metrics[60]["ff/test_goodness"], abs=1e-4)
    # the LM kinds' readers take it as it is
    assert specialization(payload)["tokens"] == windows
    assert len(class_expert_shares(payload)) == len(payload["classes"])


@pytest.mark.slow
def test_max_epochs_ends_the_run_completed(tmp_path):
    profile = _profile("data.grammar_sentences=300", "train.steps=1000", "ternary.max_epochs=2",
                       "train.eval_every=0", "ternary.early_stopping_patience=0")
    status, emitter = _run(profile, tmp_path)
    per_epoch = len(load_samples(profile)[0]) // 32
    assert status == "completed"
    assert _of_type(emitter, "finished")[0] == {
        "type": "finished", "step": 2 * per_epoch, "status": "completed",
        "reason": "reached ternary.max_epochs = 2 epochs"}
    assert [c["step"] for c in _of_type(emitter, "checkpoint")][-1] == 2 * per_epoch


@pytest.mark.slow
def test_every_recipe_at_once_changes_phase_and_k_and_resumes_bit_identically(tmp_path):
    text = tmp_path / "log.txt"
    text.write_bytes(b"".join(f"entry {i}: value {i * 7 % 13} is fine.\n".encode()
                              for i in range(1500)))
    profile = _profile(
        "train.steps=40", "train.eval_every=10", "train.log_every=1", "checkpoint.every=0",
        "ternary.negatives=hybrid", "ternary.augment_noise=0.05", "ternary.expert_dropout=0.1",
        "ternary.negative_samples_per_positive=2", "ternary.curriculum_phases=2",
        "ternary.curriculum_by=typicality", "ternary.active_experts_schedule=[6]",
        "ternary.active_experts_at=[25]", "ternary.specialization_learning=0.05",
        "ternary.goodness=layers",
        f'data.sources=[{{name = "grammar", weight = 2.0}}, '
        f'{{name = "log", source = "text", path = "{text}"}}]')
    status, whole = _run(profile, tmp_path / "whole")
    assert status == "completed"
    metrics = _metrics(whole)
    assert [metrics[s]["route/active_experts"] for s in (24, 25)] == [4.0, 6.0]
    loads = {e["step"]: sum(e["loads"]["0"]) for e in _of_type(whole, "expert_load")}
    assert loads[24] == 32 * 4 and loads[25] == 32 * 6  # one log per step
    assert [metrics[s]["train/curriculum_phase"] for s in (20, 21)] == [1.0, 2.0]
    for s in (0, 10, 20, 30, 40):
        assert {"ff/source/grammar/accuracy", "ff/source/log/accuracy"} <= set(metrics[s])
    assert 0.8 < metrics[40]["ff/pairs_updated"] < 1.0  # expert dropout 0.1
    payload = _analysis(whole)[40]
    assert payload["sources"] == ["grammar", "log"] and payload["top_k"] == 6
    assert [sum(col) for col in zip(*payload["by_source"], strict=True)] == [
        n * 6 for n in payload["source_samples"]]
    status, first = _run(profile, tmp_path / "split", stop_at=20)
    assert status == "stopped"
    status, second = _run(profile, tmp_path / "split",
                          resume=list_checkpoints(tmp_path / "split")[-1].path)
    assert status == "completed"

    def comparable(emitter, lo):
        return {s: {k: v for k, v in vals.items() if k not in TIMING}
                for s, vals in _metrics(emitter).items() if s > lo}

    assert comparable(second, 20) == comparable(whole, 20)
    assert {s: p for s, p in _analysis(second).items() if s > 20} == {
        s: p for s, p in _analysis(whole).items() if s > 20}
    a = load_checkpoint(list_checkpoints(tmp_path / "whole")[-1].path)["model"]
    b = load_checkpoint(list_checkpoints(tmp_path / "split")[-1].path)["model"]
    assert torch.equal(a["router"]["spec_ER"], b["router"]["spec_ER"])
    assert all(torch.equal(x, y) for x, y in zip(a["experts"]["weights"],
                                                 b["experts"]["weights"], strict=True))
