"""Validate243Config-style rules at load time, and `moedesk size` for the ternary kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from moedesk.profiles import ProfileError, load_profile, parse_overrides, validate_data
from moedesk.profiles.sizing import model_size
from moedesk.train.ternary.model import TernaryMoE

REPO = Path(__file__).resolve().parents[2]


def _ternary(**ternary) -> dict:
    return {"name": "t", "kind": "ternary", "seed": 0, "ternary": ternary,
            "train": {"warmup_steps": 0}}


def _problems(data: dict) -> list[str]:
    with pytest.raises(ProfileError) as info:
        validate_data(data)
    return info.value.lines


def test_shipped_ternary_profiles_validate():
    for name in ("ternary243.toml", "tiny_ternary.toml", "ternary_small.toml",
                 "ternary_large.toml", "ternary_minimal.toml"):
        profile = load_profile(REPO / "profiles" / name)
        assert profile.kind == "ternary"
    assert load_profile(REPO / "profiles" / "ternary243.toml").ternary.num_experts == 243


def test_seed_000_presets_carry_the_seeds_settings():
    small, large, minimal = (load_profile(REPO / "profiles" / f"ternary_{n}.toml")
                             for n in ("small", "large", "minimal"))
    # small data: batch 16, 20 epochs, log every step
    assert (small.train.batch_size, small.ternary.max_epochs, small.train.log_every) == (16, 20, 1)
    # large data: batch 256, 500 epochs, log every 100, patience 50
    assert (large.train.batch_size, large.ternary.max_epochs, large.train.log_every,
            large.ternary.early_stopping_patience) == (256, 500, 100, 50)
    # minimal rebalancing: batch 32, one negative, a tenth of the default alpha
    default = load_profile(REPO / "profiles" / "ternary243.toml").ternary
    assert (minimal.train.batch_size, minimal.ternary.negative_samples_per_positive) == (32, 1)
    assert minimal.ternary.load_balance_alpha == default.load_balance_alpha / 10
    for preset in (small, large, minimal):  # the presets change only what the seed changes
        assert preset.ternary.negatives == default.negatives
        assert preset.ternary.num_experts == 243 and preset.ternary.input_dim == default.input_dim


def test_243_experts_need_hierarchical_selection():
    lines = _problems(_ternary(topology="flat"))
    assert lines == ["ternary.topology: got 'flat'; 243 experts need 'hierarchical' selection "
                     "(Validate243Config)"]
    validate_data(_ternary(num_experts=81, active_experts=8, topology="flat"))  # fine below 243


def test_active_experts_at_most_32_and_at_most_the_experts():
    assert _problems(_ternary(active_experts=33)) == [
        "ternary.active_experts: got 33; must be between 1 and 32"]
    lines = _problems(_ternary(num_experts=8, active_experts=9, topology="flat"))
    assert lines == ["ternary.active_experts: got 9; must be <= ternary.num_experts (8)"]


def test_chosen_clusters_must_hold_the_active_experts_even_with_the_short_last_cluster():
    # 243 = 15 x 16 + 3: the smallest 2 clusters hold 16 + 3 = 19 experts
    validate_data(_ternary(active_clusters=2, active_experts=19))
    lines = _problems(_ternary(active_clusters=2, active_experts=20))
    assert lines == ["ternary.active_clusters: got 2; the smallest 2 clusters hold 19 experts "
                     "(cluster_size 16, last cluster 3), fewer than active_experts (20)"]
    lines = _problems(_ternary(active_clusters=1, active_experts=16))
    assert "the smallest 1 clusters hold 3 experts" in lines[0]


def test_cluster_counts_must_leave_a_real_level_1_choice():
    assert _problems(_ternary(active_clusters=16)) == [
        "ternary.active_clusters: got 16; must be < the 16 clusters (ceil(243 / 16)), else "
        "level 1 keeps every cluster"]
    assert _problems(_ternary(cluster_size=300)) == [
        "ternary.cluster_size: got 300; must be <= ternary.num_experts (243)"]
    assert _problems(_ternary(cluster_size=243, active_clusters=1)) == [
        "ternary.cluster_size: got 243; makes a single cluster, use topology = 'flat'"]


def test_ternary_rejects_settings_it_cannot_honour():
    data = _ternary()
    data["train"].update(device="cuda", grad_accum=2)
    data["data"] = {"source": "tokens", "path": __file__}
    lines = _problems(data)
    assert "data.source: got 'tokens'; ternary runs read 'grammar', 'text' or 'trits'" in lines
    assert "train.device: got 'cuda'; ternary runs are CPU-only (use 'auto' or 'cpu')" in lines
    assert any(line.startswith("train.grad_accum: got 2; a ternary step is one batch")
               for line in lines)
    assert _problems(_ternary(hebbian_rule="oja")) == [
        "ternary.hebbian_rule: got 'oja'; allowed values: 'contrastive', 'reference'"]


@pytest.mark.slow
def test_size_report_matches_the_built_model_and_packs_five_trits_per_byte():
    for name in ("ternary243.toml", "tiny_ternary.toml"):
        profile = load_profile(REPO / "profiles" / name)
        size = model_size(profile)
        model = TernaryMoE(profile)
        assert size.total_params == model.total_params
        assert size.active_params == model.active_params
        assert size.expert_trits == sum(w[0].numel() for w in model.bank.weights_EIO)
        assert size.centroid_trits == model.router.centroid_CR.numel()
        assert size.spec_trits == model.router.spec_ER.numel()
    size = model_size(load_profile(REPO / "profiles" / "ternary243.toml",
                                   parse_overrides(["ternary.input_dim=64"])))
    # the reference's 64 -> 128 -> 128 -> 64 expert: 32,768 weight trits
    assert size.expert_trits == 32768 and size.all_expert_trits == 243 * 32768
    assert size.experts_packed_bytes == -(-243 * 32768 // 5) + 243 * 320 * 4
    assert size.router_int8_bytes == 243 * 128 + 16 * 128 + 243 * 8
    assert any("packed 5/byte" in line for line in size.lines())
