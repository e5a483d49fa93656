"""The size calculator: equal to the real models' parameter counts, memory arithmetic, seed 001."""

from __future__ import annotations

from pathlib import Path

import pytest

from moedesk.profiles import load_profile, validate_data
from moedesk.profiles.sizing import (
    dense_ffn_hidden,
    expert_hidden,
    human_bytes,
    model_size,
    moe_layer_indices,
)

REPO = Path(__file__).resolve().parents[2]


def profile(kind: str = "topk", model: dict | None = None, moe: dict | None = None):
    return validate_data({"name": "t", "kind": kind, "seed": 0,
                          "model": {"dim": 32, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2,
                                    **(model or {})},
                          "moe": moe or {}})


CASES = [
    ("dense", {}, {}),
    ("dense", {"tie_embeddings": False, "ffn_hidden": 100}, {}),
    ("topk", {}, {}),
    ("topk", {"tie_embeddings": False, "n_kv_heads": 4}, {"num_experts": 4, "top_k": 1}),
    ("topk", {"ffn_hidden": 96}, {"expert_hidden": 40, "moe_layers": [0, 2]}),
    ("topk", {}, {"num_experts": 6, "top_k": 3, "skip_first_n_moe": 2}),
]


@pytest.mark.parametrize(("kind", "model", "moe"), CASES)
def test_sizes_equal_the_real_model(kind, model, moe):
    from moedesk.train.loop import build_model

    p = profile(kind, model, moe)
    lm = build_model(p)
    size = model_size(p)
    assert size.total_params == sum(t.numel() for t in lm.parameters())
    assert size.active_params == lm.num_active_params()
    assert size.total_params == (size.embedding_params + size.attention_params
                                 + size.ffn_params + size.norm_params)


@pytest.mark.slow
def test_shipped_profiles_match_their_models():
    from moedesk.train.loop import build_model

    for name in ("dense.toml", "top2.toml", "tiny_topk.toml", "topk_collapse.toml"):
        p = load_profile(REPO / "profiles" / name)
        assert model_size(p).total_params == build_model(p).num_params(), name


def test_top2_has_the_active_parameters_of_dense_plus_its_routers():
    dense = model_size(load_profile(REPO / "profiles" / "dense.toml"))
    top2_profile = load_profile(REPO / "profiles" / "top2.toml")
    top2 = model_size(top2_profile)
    routers = len(moe_layer_indices(top2_profile.model, top2_profile.moe)) \
        * top2_profile.model.dim * top2_profile.moe.num_experts
    assert top2.active_params == dense.active_params + routers
    assert top2.total_params > 3 * dense.total_params  # 8 experts of half the dense width


def test_moe_parameters_scale_with_the_number_of_experts():
    base = model_size(profile(moe={"num_experts": 2, "top_k": 1, "expert_hidden": 64}))
    more = model_size(profile(moe={"num_experts": 8, "top_k": 1, "expert_hidden": 64}))
    per_expert = 3 * 32 * 64
    routers = 3 * 32 * 6  # the router grows by one row per expert too
    assert more.total_params - base.total_params == 3 * 6 * per_expert + routers
    assert more.active_params - base.active_params == 3 * 32 * 6  # only the routers


def test_memory_is_bytes_per_parameter():
    size = model_size(profile())
    n = size.total_params
    assert size.weights_fp32_bytes == 4 * n and size.weights_bf16_bytes == 2 * n
    assert size.grads_bytes == 4 * n and size.adamw_bytes == 8 * n
    assert size.training_bytes == 16 * n
    assert 0 < size.active_share < 1
    assert size.to_dict()["training_bytes"] == 16 * n
    assert "active" in size.lines()[0] and human_bytes(3 * 2**20) == "3.0 MiB"


def test_ffn_width_defaults():
    # 8/3 * dim rounded up to 32; K experts of the default width hold the dense FFN's weights
    for dim, want in ((64, 192), (256, 704), (96, 256)):
        p = profile(model={"dim": dim})
        assert dense_ffn_hidden(p.model) == want
        assert expert_hidden(p.model, p.moe) == want // p.moe.top_k
    assert dense_ffn_hidden(profile(model={"ffn_hidden": 100}).model) == 100
    assert moe_layer_indices(profile().model, profile(moe={"skip_first_n_moe": 1}).moe) == [1, 2]


def test_seed_001_size_quote():
    # seed 001: "8-layer, 512-dim model with 8 experts: ~47M total, ~13M active" with its
    # defaults vocab 50257, 8 heads, 2 KV heads, top-2. Counting non-embedding parameters
    # with experts of hidden 424 gives the 47M; the 13M cannot be had at the same time
    # (see moedesk/profiles/sizing.py), the closest is ~15.7M.
    p = profile(model={"vocab_size": 50257, "dim": 512, "n_layers": 8, "n_heads": 8,
                       "n_kv_heads": 2},
                moe={"num_experts": 8, "top_k": 2, "expert_hidden": 424})
    size = model_size(p)
    total = size.total_params - size.embedding_params
    active = size.active_params - size.embedding_params
    assert total == pytest.approx(47e6, rel=0.01)
    assert active == pytest.approx(15.7e6, rel=0.01)
    # the quoted pair needs non-expert weights at 3.6% of the total, but attention alone is
    # already 11% of 47M with dim 512 and 8 layers
    assert size.attention_params / 47e6 > 0.11
