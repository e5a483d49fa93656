"""The comparison protocol's checks and plan: refuse unfair pairs, never oversubscribe."""

from __future__ import annotations

from pathlib import Path

import pytest

from moedesk.compare import CompareError, check_pair, make_plan, protocol_differences
from moedesk.profiles import load_profile

REPO = Path(__file__).resolve().parents[2]
DENSE = str(REPO / "profiles" / "lab_dense.toml")
MOE = str(REPO / "profiles" / "lab_moe.toml")


def write_variant(tmp_path: Path, replace: dict[str, str]) -> str:
    text = Path(MOE).read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "variant.toml"
    path.write_text(text)
    return str(path)


def test_lab_profiles_differ_only_in_kind_model_and_moe():
    dense, moe = load_profile(DENSE), load_profile(MOE)
    assert protocol_differences(dense, moe) == []
    check_pair(dense, moe)
    assert (dense.kind, moe.kind) == ("dense", "topk")
    # seed 002: one block's FFN -> 4 experts, top-2, alpha 0.01, no tricks
    assert moe.moe.num_experts == 4 and moe.moe.top_k == 2 and moe.moe.moe_layers == [1]
    assert moe.moe.aux_loss_weight == 0.01
    assert moe.moe.z_loss_weight == 0 and moe.moe.bias_balancing is False
    assert moe.moe.router_noise_std == 0 and moe.moe.expert_dropout == 0
    assert moe.model.dropout == 0 and moe.moe.capacity_factor == 0
    assert dense.model == moe.model


@pytest.mark.parametrize("old,new,key", [
    ("lr = 3e-3", "lr = 1e-3", "train.lr"),
    ("batch_size = 16", "batch_size = 8", "train.batch_size"),
    ("steps = 300", "steps = 200", "train.steps"),
    ("warmup_steps = 30", "warmup_steps = 10", "train.warmup_steps"),
    ("grammar_sentences = 5000", "grammar_sentences = 4000", "data.grammar_sentences"),
    ("eval_batches = 8", "eval_batches = 4", "train.eval_batches"),
])
def test_a_pair_that_differs_in_the_protocol_is_refused_naming_the_key(tmp_path, old, new, key):
    variant = write_variant(tmp_path, {old: new})
    with pytest.raises(CompareError) as info:
        make_plan(DENSE, variant, seeds=2)
    assert key in str(info.value)


def test_threads_may_differ_because_the_protocol_sets_them(tmp_path):
    variant = write_variant(tmp_path, {"threads = 1 ": "threads = 2 "})
    plan = make_plan(DENSE, variant, seeds=1, cores=4)
    base, var = plan.slots()
    assert base.profile.train.threads == var.profile.train.threads == plan.threads


def test_a_ternary_profile_is_refused(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('name = "t"\nkind = "ternary"\nseed = 1\n')
    with pytest.raises(CompareError, match="kind 'ternary'"):
        make_plan(DENSE, str(path))


@pytest.mark.parametrize("cores,jobs,seeds,expect_jobs,expect_threads", [
    (2, None, 3, 2, 1), (8, None, 3, 6, 1), (8, 2, 3, 2, 4), (2, 16, 3, 2, 1), (1, None, 2, 1, 1),
    (16, 3, 2, 3, 5),
])
def test_never_more_runs_at_once_than_cores_and_threads_fill_the_machine(
        cores, jobs, seeds, expect_jobs, expect_threads):
    plan = make_plan(DENSE, MOE, seeds=seeds, jobs=jobs, cores=cores)
    assert plan.jobs == expect_jobs <= cores
    assert plan.threads == expect_threads
    assert plan.jobs * plan.threads <= cores


def test_each_seed_overrides_the_seed_of_both_profiles_and_steps_scale_the_warmup():
    plan = make_plan(DENSE, MOE, seeds=3, steps=20, cores=2)
    slots = plan.slots()
    assert [(s.role, s.seed) for s in slots] == [
        ("baseline", 36000), ("variant", 36000), ("baseline", 36001), ("variant", 36001),
        ("baseline", 36002), ("variant", 36002)]
    for slot in slots:
        assert slot.profile.seed == slot.seed
        assert slot.profile.train.steps == 20
        assert slot.profile.train.warmup_steps == round(30 * 20 / 300)
    base, var = slots[0].profile, slots[1].profile
    assert base.train == var.train and base.data == var.data
    assert base.kind == "dense" and var.kind == "topk"
    assert plan.notes and "warmup_steps 30 -> 2" in plan.notes[0]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(CompareError, match="--seeds"):
        make_plan(DENSE, MOE, seeds=0)
    with pytest.raises(CompareError, match="no such profile file"):
        make_plan(DENSE, "nope.toml")
