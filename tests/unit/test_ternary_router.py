"""The ternary router: exactly K distinct experts, real clusters, load penalty, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from moedesk.profiles.schema import TernarySection
from moedesk.train.ternary.router import TernaryRouter, majority_centroids, random_trits, top_k_stable


def _inputs(batch: int, dim: int = 128, seed: int = 5) -> torch.Tensor:
    return random_trits((batch, dim), torch.Generator().manual_seed(seed))


def _router(**kw) -> TernaryRouter:
    return TernaryRouter(TernarySection(**kw), seed=3)


def test_flat_and_hierarchical_pick_exactly_k_distinct_experts():
    x = _inputs(64)
    for topology in ("flat", "hierarchical"):
        experts = _router(topology=topology).route(x)
        assert experts.shape == (64, 16) and experts.dtype == torch.int64
        assert all(len(set(row)) == 16 for row in experts.tolist())
        assert int(experts.min()) >= 0 and int(experts.max()) < 243


def test_flat_routing_is_the_top_k_of_the_integer_dot_products():
    router = _router(topology="flat", load_balance_alpha=0.0)
    x = _inputs(8)
    scores = x.int() @ router.spec_ER.int().t()  # exact integer dot products
    experts = router.route(x)
    for b in range(8):
        chosen = scores[b, experts[b]]
        others = scores[b][~torch.isin(torch.arange(243), experts[b])]
        assert int(chosen.min()) >= int(others.max())
        assert chosen.tolist() == sorted(chosen.tolist(), reverse=True)


def test_hierarchical_picks_only_from_the_chosen_clusters():
    router = _router(load_balance_alpha=0.0)
    x = _inputs(32)
    clusters = router.chosen_clusters(x)
    experts = router.route(x)
    assert clusters.shape == (32, 4)
    for b in range(32):
        allowed = set(clusters[b].tolist())
        assert {e // 16 for e in experts[b].tolist()} <= allowed
        # within the allowed experts it is still the top 16 by score
        scores = router.scores(x[b:b + 1])[0]
        candidates = [e for e in range(243) if e // 16 in allowed]
        best = sorted(candidates, key=lambda e: (-float(scores[e]), e))[:16]
        assert experts[b].tolist() == best


def test_centroids_are_majority_votes_and_discriminate():
    router = _router()
    spec = router.spec_ER.int()
    for c in range(router.num_clusters):
        members = spec[c * 16:(c + 1) * 16]
        assert torch.equal(router.centroid_CR[c].int(), torch.sign(members.sum(0)))
    # the reference's truncating division would leave every full cluster all-zero
    assert int((router.centroid_CR != 0).sum(1).min()) > 64
    # and different clusters score a sample differently, so level 1 is a real choice
    cluster_scores = _inputs(64).float() @ router.centroid_CR.float().t()
    assert int(cluster_scores.std(1).min()) > 1
    assert len({tuple(r) for r in router.chosen_clusters(_inputs(64)).tolist()}) > 10


def test_majority_centroid_ties_give_zero():
    spec = torch.tensor([[1, 1, -1], [1, -1, 0]], dtype=torch.int8)
    centroids = majority_centroids(spec, torch.tensor([0, 0]), 1)
    assert centroids.tolist() == [[1, 0, -1]]


def test_ties_break_towards_the_lower_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    assert top_k_stable(scores, 3).tolist() == [[1, 2, 4]]
    router = _router(topology="flat", load_balance_alpha=0.0)
    x = torch.zeros(2, 128, dtype=torch.int8)  # every score is 0
    assert router.route(x).tolist() == [list(range(16))] * 2


def test_routing_is_deterministic_in_the_seed():
    x = _inputs(16)
    assert torch.equal(_router().route(x), _router().route(x))
    other = TernaryRouter(TernarySection(), seed=4)
    assert not torch.equal(_router().spec_ER, other.spec_ER)


@pytest.mark.slow
def test_load_penalty_spreads_a_collapsed_routing():
    # every sample identical: without a penalty the same 16 experts win every time
    x = _inputs(1).repeat(64, 1)
    plain = _router(topology="flat", load_balance_alpha=0.0)
    balanced = _router(topology="flat", load_balance_alpha=1.0)
    for _ in range(20):
        plain.route(x)
        balanced.route(x)
    assert int((plain.counts_E > 0).sum()) == 16
    assert int((balanced.counts_E > 0).sum()) > 16
    # the penalty is alpha * score_std * (load - 1): zero mean over experts
    penalty = balanced.load_penalty_E()
    assert abs(float(penalty.mean())) < 1e-4
    assert math.isclose(balanced.score_std, math.sqrt(2 / 3 * 128))


def test_counters_halve_every_rebalance_interval_batches_and_eval_does_not_count():
    router = _router(rebalance_interval=3)
    x = _inputs(10)
    router.route(x, update=False)
    assert float(router.counts_E.sum()) == 0
    router.route(x)
    router.route(x)
    assert float(router.counts_E.sum()) == 2 * 10 * 16
    router.route(x)  # third batch: counted, then halved
    assert float(router.counts_E.sum()) == 3 * 10 * 16 / 2
    assert router.batches_since_decay == 0


def test_state_round_trip_restores_counters_and_specializations():
    router = _router()
    router.route(_inputs(20))
    state = router.state_dict()
    fresh = TernaryRouter(TernarySection(), seed=99)
    fresh.load_state_dict(state)
    x = _inputs(20, seed=8)
    assert torch.equal(fresh.route(x), router.route(x))
    assert torch.equal(fresh.centroid_CR, router.centroid_CR)


def test_short_inputs_are_zero_padded():
    router = _router(topology="flat", load_balance_alpha=0.0)
    x = _inputs(4, dim=40)
    padded = torch.nn.functional.pad(x, (0, 88))
    assert torch.equal(router.route(x, update=False), router.route(padded, update=False))


@pytest.mark.slow
def test_one_sample_path_makes_the_batched_paths_choices_and_counts():
    for topology in ("flat", "hierarchical"):
        for alpha in (0.0, 0.1, 1.0):
            fast = _router(topology=topology, load_balance_alpha=alpha, rebalance_interval=7)
            batched = _router(topology=topology, load_balance_alpha=alpha, rebalance_interval=7)
            x = _inputs(200, seed=11)
            x[::5] = 0  # all-zero samples: every score ties, only the penalties differ
            x[1::7, 100:] = 0
            for i in range(200):
                one = fast.route(x[i:i + 1])  # the numpy path
                assert torch.equal(one, batched._route_batch(x[i:i + 1], True)), (topology, i)
            assert torch.equal(fast.counts_E, batched.counts_E)
            assert fast.batches_since_decay == batched.batches_since_decay
            # frozen counters: a single sample routes as it would inside a batch
            together = fast.route(x[:20], update=False)
            alone = torch.cat([fast.route(x[i:i + 1], update=False) for i in range(20)])
            assert torch.equal(together, alone)


def test_one_sample_path_pads_short_inputs_and_survives_a_state_round_trip():
    router = _router(load_balance_alpha=0.3)
    router.route(_inputs(50))
    short = _inputs(1, dim=40)
    padded = torch.nn.functional.pad(short, (0, 88))
    assert torch.equal(router.route(short, update=False), router.route(padded, update=False))
    fresh = TernaryRouter(TernarySection(load_balance_alpha=0.3), seed=99)
    fresh.load_state_dict(router.state_dict())
    x = _inputs(1, seed=12)
    assert torch.equal(fresh.route(x), router.route(x))
    assert torch.equal(fresh.counts_E, router.counts_E)


def test_routing_keys_order_exactly_as_top_k_stable_of_the_penalized_scores():
    # the keys carry the tie-break as a fraction -(n-1-id)/n beside an integer grid
    # score; at the largest alpha and a heavily skewed load the grid is large, and the
    # order must still be top_k_stable's (lower id wins a tie) on both paths
    router = _router(topology="flat", load_balance_alpha=10.0, rebalance_interval=1000)
    skew = _inputs(1, seed=21).repeat(64, 1)
    for _ in range(30):
        router.route(skew)
    x = _inputs(40, seed=22)
    x[::4] = 0  # all-zero samples: every dot product ties, only penalty and id decide
    penalized = router.scores(x).double() - router.load_penalty_E()
    expected = top_k_stable(penalized, 16)
    # penalties beyond the dot products' spread (~9 score units): the grid is large
    assert float(router.load_penalty_E().abs().max()) > 20
    assert torch.equal(router.route(x, update=False), expected)
    one_by_one = torch.cat([router.route(x[i:i + 1], update=False) for i in range(40)])
    assert torch.equal(one_by_one, expected)
