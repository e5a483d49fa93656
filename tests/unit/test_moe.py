"""The top-k MoE FFN (routing, losses, dispatch, capacity, bias balancing) and the MoE LM run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from moedesk.profiles import load_profile
from moedesk.profiles.schema import ModelSection, MoESection
from moedesk.stats.load import SCALAR_KEYS, load_stats
from moedesk.train import loop
from moedesk.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from moedesk.train.data import LMData, unigram_entropy
from moedesk.train.emit import ListEmitter
from moedesk.train.experts import _RepeatRows, combine_permuted, combine_slots, pad_groups, slot_ranks
from moedesk.train.model import LM, SwiGLU
from moedesk.train.moe import MoEFFN, MoELM, expert_softmax
from moedesk.train.moe_telemetry import MoETelemetry

REPO = Path(__file__).resolve().parents[2]
TINY_TOPK = REPO / "profiles" / "tiny_topk.toml"
COLLAPSE = REPO / "profiles" / "topk_collapse.toml"
DIM, HIDDEN = 16, 12
# an MoE layer's state_dict names before issue 10, spelled out (not read from LEGACY_NAMES)
OLD_NAMES = {"expert_bias_E": "expert_bias", "router.weight_ED": "router.weight",
             "experts.w1_EFD": "experts.w1", "experts.w3_EFD": "experts.w3",
             "experts.w2_EDF": "experts.w2"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tensors this small only lose from a second OpenMP thread, badly on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_ffn(seed: int = 0, dim: int = DIM, hidden: int = HIDDEN, **moe) -> MoEFFN:
    torch.manual_seed(seed)
    cfg = MoESection(**{"num_experts": 4, "top_k": 2, **moe})
    ffn = MoEFFN(dim, hidden, cfg)
    ffn.init_weights(0.2, 0.1)
    return ffn


def dense_gates(ffn: MoEFFN, x_TD: torch.Tensor) -> torch.Tensor:
    """The routing as a [T, E] matrix of gate weights (zero for unchosen experts)."""
    ids_TK, gates_TK, _, _ = ffn.route(x_TD)
    return torch.zeros(x_TD.shape[0], ffn.num_experts).scatter(1, ids_TK, gates_TK)


def of_type(events, kind):
    return [e for e in events if e["type"] == kind]


def model_values(values: dict) -> dict:
    """The metrics that measure the model, not the machine (timings differ run to run)."""
    return {k: v for k, v in values.items()
            if not k.startswith(("sys/", "route/")) and not k.endswith("_per_s")}


def train_metrics(events) -> list[dict]:
    return [e["values"] for e in of_type(events, "metrics") if "train/loss" in e["values"]]


# ---- routing and losses -------------------------------------------------------------------
@pytest.mark.parametrize("top_k", [1, 2, 3])
@pytest.mark.parametrize("bias_balancing", [False, True])
def test_every_token_gets_exactly_k_gates_summing_to_one(top_k, bias_balancing):
    ffn = make_ffn(top_k=top_k, bias_balancing=bias_balancing)
    ffn.expert_bias_E.copy_(torch.tensor([0.3, -0.1, -0.2, 0.0]))
    gates_TE = dense_gates(ffn, torch.randn(200, DIM))
    assert ((gates_TE > 0).sum(1) == top_k).all()
    torch.testing.assert_close(gates_TE.sum(1), torch.ones(200))


def test_the_bias_picks_experts_but_never_weighs_them():
    ffn = make_ffn(bias_balancing=True)
    x_TD = torch.randn(100, DIM)
    ffn.expert_bias_E.copy_(torch.tensor([0.0, 0.0, 5.0, 5.0]))  # forces experts 2 and 3
    ids_TK, gates_TK, probs_TE, _ = ffn.route(x_TD)
    assert (ids_TK.sort(1).values == torch.tensor([2, 3])).all()
    chosen = probs_TE[:, 2:]
    torch.testing.assert_close(gates_TK.sort(1).values,
                               (chosen / chosen.sum(1, keepdim=True)).sort(1).values)


def test_aux_loss_equals_alpha_for_uniform_routing():
    alpha, tokens = 0.01, 64
    ffn = make_ffn(num_experts=8, top_k=2, aux_loss_weight=alpha, bias_balancing=False)
    # balanced choices give alpha whatever the probabilities are ...
    probs_TE = torch.rand(tokens, 8).softmax(-1)
    ids_TK = torch.arange(tokens * 2).view(tokens, 2) % 8
    aux, _ = ffn.balance_losses(probs_TE, probs_TE.log(), ids_TK)
    assert aux.item() == pytest.approx(alpha, rel=1e-5)
    # ... and a router with uniform probabilities gives alpha through a real forward
    torch.nn.init.zeros_(ffn.router.weight_ED)
    ffn(torch.randn(2, 32, DIM))
    assert ffn.aux_loss.item() == pytest.approx(alpha, rel=1e-5)


@pytest.mark.parametrize("top_k", [1, 2])
def test_aux_loss_reaches_alpha_e_over_k_when_every_token_picks_the_same_experts(top_k):
    alpha, num_experts = 0.01, 8
    ffn = make_ffn(num_experts=num_experts, top_k=top_k, aux_loss_weight=alpha,
                   bias_balancing=False)
    # f_i = 1/K on the chosen experts, so E * sum f_i P_i <= E/K, reached as P -> one-hot
    bound = alpha * num_experts / top_k
    logits_TE = torch.full((50, num_experts), -30.0)
    logits_TE[:, :top_k] = 30.0
    aux, _ = ffn.balance_losses(logits_TE.softmax(-1), logits_TE,
                                logits_TE.topk(top_k, -1).indices)
    assert aux.item() == pytest.approx(bound, rel=1e-6)
    torch.manual_seed(1)
    for _ in range(50):  # any other routing stays below the bound
        logits_TE = torch.randn(50, num_experts) * 3
        aux, _ = ffn.balance_losses(logits_TE.softmax(-1), logits_TE,
                                    logits_TE.topk(top_k, -1).indices)
        assert 0 < aux.item() < bound


def test_z_loss_is_beta_times_mean_squared_logsumexp():
    ffn = make_ffn(z_loss_weight=0.001)
    x_TD = torch.randn(40, DIM)
    ffn(x_TD.view(1, 40, DIM))
    logits_TE = x_TD @ ffn.router.weight_ED.T
    want = 0.001 * (torch.logsumexp(logits_TE, -1) ** 2).mean()
    assert ffn.z_loss.item() == pytest.approx(want.item(), rel=1e-5)
    off = make_ffn(z_loss_weight=0.0, aux_loss_weight=0.0)
    off(x_TD.view(1, 40, DIM))
    assert off.z_loss.item() == 0 and off.aux_loss.item() == 0


def test_moe_parameters_grow_as_e_times_the_dense_ffn():
    dense = sum(p.numel() for p in SwiGLU(DIM, HIDDEN).parameters())
    for num_experts in (1, 2, 4, 8):
        ffn = make_ffn(num_experts=num_experts, top_k=1)
        experts = sum(p.numel() for p in ffn.experts.parameters())
        assert experts == num_experts * dense
        assert sum(p.numel() for p in ffn.parameters()) == experts + DIM * num_experts


# ---- dispatch ------------------------------------------------------------------------------
@pytest.mark.parametrize("capacity_factor", [0.0, 1.0])
def test_sorted_dispatch_equals_the_eager_reference_forward_and_backward(capacity_factor):
    results = []
    x_BTD = torch.randn(3, 20, DIM)
    for dispatch in ("sorted", "eager"):
        ffn = make_ffn(seed=5, dispatch=dispatch, capacity_factor=capacity_factor,
                       aux_loss_weight=0.01)
        ffn.expert_bias_E.copy_(torch.tensor([0.05, 0.0, -0.02, 0.01]))
        x = x_BTD.clone().requires_grad_(True)
        y = ffn(x)
        (y.square().sum() + ffn.aux_loss + ffn.z_loss).backward()
        grads = [x.grad, ffn.router.weight_ED.grad, ffn.experts.w1_EFD.grad,
                 ffn.experts.w2_EDF.grad, ffn.experts.w3_EFD.grad]
        results.append((y.detach(), grads, ffn.dropped_slots))
    (y_sorted, g_sorted, drop_sorted), (y_eager, g_eager, drop_eager) = results
    torch.testing.assert_close(y_sorted, y_eager, atol=1e-6, rtol=1e-5)
    for a, b in zip(g_sorted, g_eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert drop_sorted == drop_eager
    assert (drop_sorted > 0) == (capacity_factor > 0)  # 1.0 drops something on random routing


@pytest.mark.parametrize("grouped_mm", [True, False])
def test_dropless_gather_path_equals_the_eager_reference(monkeypatch, grouped_mm):
    # DIM 16 / HIDDEN 12 rows are 16-byte aligned, so F.grouped_mm runs unless switched off
    import moedesk.train.experts as experts_mod
    assert experts_mod.use_grouped_mm(torch.zeros(4, DIM), torch.zeros(4, DIM, HIDDEN))
    if not grouped_mm:
        monkeypatch.setattr(experts_mod, "use_grouped_mm", lambda *_: False)
    results = []
    x_BTD = torch.randn(2, 24, DIM)
    for dispatch in ("sorted", "eager"):
        ffn = make_ffn(seed=7, dispatch=dispatch)
        x = x_BTD.clone().requires_grad_(True)
        y = ffn(x)
        (y.square().sum() + ffn.z_loss).backward()
        results.append([y.detach(), x.grad, ffn.router.weight_ED.grad, ffn.experts.w1_EFD.grad,
                        ffn.experts.w3_EFD.grad, ffn.experts.w2_EDF.grad])
    for fast, reference in zip(*results, strict=True):
        torch.testing.assert_close(fast, reference, atol=1e-6, rtol=1e-5)


def test_padded_expert_groups_add_exactly_nothing(monkeypatch):
    # under CPU bf16 autocast groups are padded to 32 rows; force it in fp32 to compare
    x_BTD = torch.randn(2, 30, DIM)
    results = []
    for multiple in (1, 32):
        ffn = make_ffn(seed=4, capacity_factor=1.5)
        monkeypatch.setattr(ffn, "row_multiple", lambda x_TD, m=multiple: m)
        x = x_BTD.clone().requires_grad_(True)
        y = ffn(x)
        y.square().sum().backward()
        results.append([y.detach(), x.grad, ffn.router.weight_ED.grad, ffn.experts.w1_EFD.grad,
                        ffn.experts.w2_EDF.grad])
    for plain, padded in zip(*results, strict=True):
        torch.testing.assert_close(padded, plain, atol=1e-6, rtol=1e-6)


def test_pad_groups_layout():
    token_idx, gates_S = torch.tensor([5, 6, 7, 8, 9]), torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    tokens, gates, counts = pad_groups(token_idx, gates_S, [3, 0, 2], multiple=4)
    assert counts == [4, 0, 4]
    assert tokens.tolist() == [5, 6, 7, 0, 8, 9, 0, 0]
    torch.testing.assert_close(gates, torch.tensor([0.1, 0.2, 0.3, 0, 0.4, 0.5, 0, 0]))


@pytest.mark.parametrize("dispatch", ["sorted", "eager"])
def test_capacity_drops_the_overflow_and_reports_the_fraction(dispatch):
    # the bias forces every token onto experts 0 and 1; C = ceil(1.0 * 40 * 2 / 4) = 20
    ffn = make_ffn(dispatch=dispatch, capacity_factor=1.0, bias_balancing=True)
    ffn.expert_bias_E.copy_(torch.tensor([10.0, 10.0, 0.0, 0.0]))
    assert ffn.capacity(40) == 20
    telemetry = MoETelemetry(ffn)
    y_TD = ffn(torch.randn(1, 40, DIM))[0]
    assert ffn.dropped_slots == 40  # half the slots
    assert telemetry.dropped_slots == [40] and telemetry.routed_slots == [80]
    # the earliest C slots of each expert stay: the first 20 tokens get output, the rest
    # pass through the residual untouched
    assert (y_TD[:20].abs().sum(1) > 0).all() and (y_TD[20:] == 0).all()


def test_dropped_fraction_reaches_the_metrics():
    cfg = ModelSection(dim=DIM, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=HIDDEN,
                       max_seq_len=16)
    model = MoELM(cfg, MoESection(num_experts=4, top_k=2, capacity_factor=1.0))
    telemetry = MoETelemetry(model)
    for ffn in model.moe_ffns():
        ffn.expert_bias_E.copy_(torch.tensor([10.0, 10.0, 0.0, 0.0]))
    model(torch.randint(0, 256, (2, 16)))
    telemetry.after_step()
    model.after_optimizer_step()
    values, loads = telemetry.read()
    assert values["moe/dropped_frac"] == pytest.approx(0.5)
    assert values["moe/L0/dropped_frac"] == pytest.approx(0.5)
    assert values["moe/L0/max_token_fraction"] == pytest.approx(1.0)  # counts are the demand
    assert values["moe/L1/zero_experts"] == 2 and values["moe/zero_experts"] == 4  # summed
    assert loads == {0: [32, 32, 0, 0], 1: [32, 32, 0, 0]}
    # two optimizer steps in one window: the counts add up; then the window starts over
    for _ in range(2):
        model(torch.randint(0, 256, (2, 16)))
        telemetry.after_step()
        model.after_optimizer_step()
    assert telemetry.read()[1] == {0: [64, 64, 0, 0], 1: [64, 64, 0, 0]}
    assert telemetry.read()[1] == {0: [0, 0, 0, 0], 1: [0, 0, 0, 0]}


# ---- balancing -----------------------------------------------------------------------------
def test_bias_updates_move_a_skewed_load_toward_balance():
    # a decisive router (a near-uniform one leaves margins far below u and just oscillates)
    ffn = make_ffn(num_experts=8, top_k=2, bias_balancing=True, bias_update_speed=0.01,
                   router_init_std=0.3)
    with torch.no_grad():  # inputs share a mean direction that experts 0 and 1 like
        ffn.router.weight_ED[0] += 0.3
        ffn.router.weight_ED[1] += 0.15
    x_BTD = torch.randn(4, 64, DIM) + 1.0
    imbalance = []
    for i in range(60):
        ffn(x_BTD)
        counts = ffn.tokens_per_expert_E.clone()
        imbalance.append(load_stats(counts.tolist(), 2)["imbalance"])
        ffn.update_bias()
        if i == 0:  # the busiest expert was pushed down, the idlest up
            assert ffn.expert_bias_E[counts.argmax()] < 0 < ffn.expert_bias_E[counts.argmin()]
        assert ffn.expert_bias_E.sum().abs() < 1e-5  # mean-centred
        assert ffn.tokens_per_expert_E.sum() == 0  # zeroed after each update
    assert imbalance[0] > 0.5
    assert max(imbalance[-10:]) < 0.35 * imbalance[0], imbalance


def test_no_bias_update_without_bias_balancing():
    ffn = make_ffn(bias_balancing=False)
    ffn(torch.randn(2, 30, DIM))
    ffn.update_bias()
    assert (ffn.expert_bias_E == 0).all() and ffn.tokens_per_expert_E.sum() == 0


def test_counts_untouched_under_eval_and_no_grad():
    ffn = make_ffn()
    telemetry = MoETelemetry(ffn)
    x_BTD = torch.randn(2, 30, DIM)
    ffn.eval()
    ffn(x_BTD)
    ffn.train()
    with torch.no_grad():
        ffn(x_BTD)
    telemetry.after_step()
    assert ffn.tokens_per_expert_E.sum() == 0 and telemetry.counts_LE.sum() == 0
    assert telemetry.forwards == [0] and telemetry.router_tokens == [0]  # nothing timed
    ffn(x_BTD)
    telemetry.after_step()
    assert ffn.tokens_per_expert_E.sum() == telemetry.counts_LE.sum() == 2 * 30 * 2
    assert telemetry.forwards == [1] and telemetry.router_tokens == [60]


def test_router_is_timed_once_per_window_on_training_forwards():
    ffn = make_ffn()
    telemetry = MoETelemetry(ffn)
    x_BTD = torch.randn(2, 30, DIM)
    for _ in range(3):
        ffn(x_BTD)
    assert telemetry.router_tokens == [60] and telemetry.router_seconds[0] > 0
    values, _ = telemetry.read()
    assert values["route/latency_us"] == values["route/L0/latency_us"] > 0
    assert "route/latency_us" not in telemetry.read()[0]  # nothing ran in that window
    ffn(x_BTD)
    assert telemetry.router_tokens == [60]  # the next window times its first forward again
    telemetry.remove()
    ffn(x_BTD)
    assert telemetry.router_tokens == [60] and telemetry.forwards == [1]


def test_a_window_saved_mid_way_resumes_exactly():
    def run(telemetry, ffn, steps):
        for _ in range(steps):
            ffn(torch.randn(2, 30, DIM))
            telemetry.after_step()
            ffn.update_bias()

    torch.manual_seed(0)
    ffn = make_ffn(capacity_factor=1.0, aux_loss_weight=0.01, z_loss_weight=0.001)
    straight = MoETelemetry(ffn)
    run(straight, ffn, 3)
    straight.read()
    run(straight, ffn, 2)
    state = straight.state_dict()  # two steps into the second window
    fresh = make_ffn(capacity_factor=1.0, aux_loss_weight=0.01, z_loss_weight=0.001)
    fresh.load_state_dict(ffn.state_dict())  # b travels with the model
    resumed = MoETelemetry(fresh)
    resumed.load_state_dict(state)
    want, got = straight.read(), resumed.read()
    assert got[1] == want[1] and sum(map(sum, got[1].values())) == 2 * 60 * 2
    timing = {"route/latency_us", "route/L0/latency_us"}  # the machine, not the model
    assert {k: v for k, v in got[0].items() if k not in timing} == \
        {k: v for k, v in want[0].items() if k not in timing}
    assert got[0]["moe/aux_loss"] > 0 and got[0]["moe/dropped_frac"] > 0
    assert resumed.trackers[0].zero_streaks == straight.trackers[0].zero_streaks


def test_bias_is_saved_counts_are_not():
    ffn = make_ffn()
    state = ffn.state_dict()
    assert list(state) == ["expert_bias_E", "router.weight_ED", "experts.w1_EFD",
                           "experts.w3_EFD", "experts.w2_EDF"]


def test_checkpoints_with_the_old_names_still_load():
    ffn = make_ffn(seed=1)
    ffn.expert_bias_E.copy_(torch.tensor([0.1, -0.1, 0.2, -0.2]))
    old = {OLD_NAMES[k]: v for k, v in ffn.state_dict().items()}
    fresh = make_ffn(seed=2)
    fresh.load_state_dict(old)  # strict: every key matched after the rename
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 ffn.state_dict().values(), strict=True))


def test_router_stays_fp32_under_bf16_autocast():
    ffn = make_ffn()
    x_BTD = torch.randn(2, 30, DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, gates_TK, _, logits_TE = ffn.route(x_BTD.view(-1, DIM))
        y_bf16 = ffn(x_BTD)
    assert logits_TE.dtype == gates_TK.dtype == torch.float32
    torch.testing.assert_close(y_bf16.float(), ffn(x_BTD), atol=0.05, rtol=0.05)


def test_router_noise_and_expert_dropout_are_seeded_and_training_only():
    x_BTD = torch.randn(2, 30, DIM)
    plain = make_ffn(seed=3)
    noisy = make_ffn(seed=3, router_noise_std=1.0, expert_dropout=0.5)
    torch.manual_seed(7)
    first = noisy(x_BTD)
    torch.manual_seed(7)
    assert torch.equal(first, noisy(x_BTD))  # reproducible from torch's RNG
    assert not torch.allclose(first, plain(x_BTD))
    noisy.eval()
    plain.eval()
    assert torch.equal(noisy(x_BTD), plain(x_BTD))  # evaluation sees neither
    noisy.train()
    ids_TK, gates_TK, _, _ = noisy.route(x_BTD.view(-1, DIM))
    dispatch_ids, kept_TK = noisy._dispatch_ids(ids_TK, gates_TK)
    removed_TK = (dispatch_ids == noisy.num_experts).view(-1, 2)
    assert removed_TK.any() and not removed_TK.all(1).any()  # every token keeps one expert
    assert (kept_TK[removed_TK] == 0).all()
    torch.testing.assert_close(kept_TK.sum(1), torch.ones(60))


# ---- the MoE LM in the training loop -------------------------------------------------------
class LoggingEmitter(ListEmitter):
    """Keeps the human log lines too."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    profile = load_profile(TINY_TOPK)
    emitter = LoggingEmitter()
    status = loop.train_lm(profile, tmp_path_factory.mktemp("tiny_topk"), emitter)
    return profile, emitter.events, status, emitter.lines


@pytest.mark.slow
def test_tiny_topk_run_reports_expert_load_for_every_moe_layer(tiny_run):
    profile, events, status, _ = tiny_run
    assert status == "completed"
    metrics = train_metrics(events)
    loads = of_type(events, "expert_load")
    assert [e["step"] for e in loads] == list(range(1, profile.train.steps + 1))
    tokens = profile.train.batch_size * profile.data.seq_len
    for event in loads:
        assert sorted(event["loads"]) == ["0", "1"]  # both blocks are MoE
        for counts in event["loads"].values():
            assert len(counts) == profile.moe.num_experts
            assert sum(counts) == tokens * profile.moe.top_k
    last = metrics[-1]
    # the same load statistics as the ternary kind (SCALAR_KEYS), plus the routing losses
    for name in (*SCALAR_KEYS, "dead_experts", "aux_loss", "z_loss", "max_abs_bias",
                 "dropped_frac"):
        assert f"moe/{name}" in last and f"moe/L1/{name}" in last
    assert 0 < last["moe/z_loss"] < 0.01 and last["moe/max_abs_bias"] > 0
    assert last["route/latency_us"] > 0 and last["moe/dropped_frac"] == 0
    assert not any(k.startswith("moe/expert") for k in last)  # loads are vectors, not keys
    started = of_type(events, "started")[0]
    assert started["params"]["total"] > started["params"]["active"]


def test_tiny_topk_learns_and_bias_balancing_keeps_experts_even(tiny_run):
    profile, events, _, _ = tiny_run
    val = [e["values"]["val/loss"] for e in of_type(events, "metrics")
           if "val/loss" in e["values"]]
    entropy = unigram_entropy(LMData(profile.data, profile.seed, 1, 256).splits["train"])
    assert val[-1] < entropy - 0.5, (val, entropy)
    imbalance = [m["moe/imbalance"] for m in train_metrics(events)]
    tail = imbalance[-len(imbalance) // 5:]
    assert sum(tail) / len(tail) < 0.1, tail
    assert max(imbalance[: len(imbalance) // 5]) > 0.2  # balance was earned, not given


def test_the_train_log_shows_the_aux_loss_and_seed_003s_expert_statistics(tiny_run):
    profile, events, _, lines = tiny_run
    metrics = {e["step"]: e["values"] for e in of_type(events, "metrics")
               if "train/loss" in e["values"]}
    step_lines = [line for line in lines if line.startswith("Step ")]
    assert len(step_lines) == profile.train.steps // 10
    last = metrics[profile.train.steps]
    assert step_lines[-1] == (f"Step 120/120 | LM Loss: {last['train/loss']:.4f} | Aux Loss: "
                              f"{last['moe/aux_loss']:.4f} | LR: {last['train/lr']:.2e} | "
                              f"Tokens/sec: {last['train/tokens_per_s']:.0f}")
    blocks = [line for line in lines if line.startswith("Expert Statistics")]
    assert len(blocks) == 1  # one evaluation, at the end
    block = blocks[0].splitlines()
    assert block[0] == "Expert Statistics (validation routing, mean of 2 MoE layers):"
    shown = dict(line.strip().split(": ") for line in block[1:])
    assert list(shown) == ["expert_usage_mean", "expert_usage_std", "expert_usage_min",
                           "expert_usage_max", "expert_entropy"]
    # the same numbers as load_stats of the analysis histograms, averaged over the layers
    payloads = [e["payload"] for e in of_type(events, "analysis")]
    stats = [load_stats(p["histogram"], p["top_k"]) for p in payloads]
    E = profile.moe.num_experts
    assert float(shown["expert_usage_mean"]) == pytest.approx(1 / E, abs=5e-5)
    for key, stat in (("expert_usage_std", "usage_std"), ("expert_usage_min", "min_share"),
                      ("expert_usage_max", "max_share")):
        assert float(shown[key]) == pytest.approx(sum(s[stat] for s in stats) / 2, abs=5e-5)
    nats = sum(s["entropy_norm"] for s in stats) / 2 * math.log(E)
    assert float(shown["expert_entropy"]) == pytest.approx(nats, abs=5e-5)
    assert 0.95 * math.log(E) < nats <= math.log(E)  # balanced by then: near ln E


@pytest.mark.slow
def test_collapse_profile_really_collapses(tmp_path):
    emitter = ListEmitter()
    assert loop.train_lm(load_profile(COLLAPSE), tmp_path, emitter) == "completed"
    fraction = [m["moe/max_token_fraction"] for m in train_metrics(emitter.events)]
    collapsed = [f > 0.8 for f in fraction]
    assert sum(collapsed) > 0.5 * len(fraction), fraction
    longest = run = 0
    for c in collapsed:
        run = run + 1 if c else 0
        longest = max(longest, run)
    assert longest >= 5  # long enough for the routing-collapse rule's patience


@pytest.mark.slow
def test_topk_resume_is_exact_with_the_bias_restored(tmp_path):
    settings = {"train.steps": 24, "train.grad_accum": 2, "checkpoint.every": 0,
                "data.seq_len": 16, "model.max_seq_len": 16, "train.batch_size": 4,
                "data.grammar_sentences": 300, "train.eval_batches": 1,
                "moe.router_noise_std": 0.1, "moe.bias_update_speed": 0.01}
    straight = ListEmitter()
    assert loop.train_lm(load_profile(TINY_TOPK, settings), tmp_path / "a",
                         straight) == "completed"
    first = ListEmitter()
    assert loop.train_lm(load_profile(TINY_TOPK, settings), tmp_path / "b", first,
                         stop_at=12) == "stopped"
    ckpt = of_type(first.events, "checkpoint")[-1]
    assert ckpt["step"] == 12
    legacy = load_checkpoint(Path(ckpt["path"]))  # made old-style below (the resume prunes it)
    assert legacy["model"]["blocks.0.ffn.expert_bias_E"].abs().max() > 0
    second = ListEmitter()
    assert loop.train_lm(load_profile(TINY_TOPK, settings), tmp_path / "b", second,
                         resume=Path(ckpt["path"])) == "completed"
    want = {e["step"]: e["values"] for e in of_type(straight.events, "metrics")
            if "train/loss" in e["values"]}
    got = {e["step"]: e["values"] for e in of_type(second.events, "metrics")
           if "train/loss" in e["values"]}
    assert sorted(got) == list(range(13, 25))
    for step in range(13, 25):
        for name in ("train/loss", "moe/imbalance", "moe/max_abs_bias", "moe/dead_experts"):
            assert got[step][name] == want[step][name], (step, name)
    want_loads = {e["step"]: e["loads"] for e in of_type(straight.events, "expert_load")}
    assert all(e["loads"] == want_loads[e["step"]] for e in of_type(second.events, "expert_load"))
    end_a = load_checkpoint(list_checkpoints(tmp_path / "a")[-1].path)["model"]
    end_b = load_checkpoint(list_checkpoints(tmp_path / "b")[-1].path)["model"]
    assert all(torch.equal(end_a[k], end_b[k]) for k in end_a)

    # a checkpoint written before issue 10 (old parameter names, the telemetry window under
    # "extra") resumes just as exactly
    legacy["extra"] = legacy.pop("telemetry")
    legacy["model"] = {".".join(k.split(".")[:3] + [OLD_NAMES[".".join(k.split(".")[3:])]])
                       if ".ffn." in k else k: v for k, v in legacy["model"].items()}
    assert "blocks.1.ffn.experts.w2" in legacy["model"]
    old_ckpt = save_checkpoint(legacy, tmp_path / "c", 12)
    third = ListEmitter()
    assert loop.train_lm(load_profile(TINY_TOPK, settings), tmp_path / "c", third,
                         resume=old_ckpt.path) == "completed"
    from_old = {e["step"]: e["values"] for e in of_type(third.events, "metrics")
                if "train/loss" in e["values"]}
    assert sorted(from_old) == list(range(13, 25))
    assert all(model_values(from_old[s]) == model_values(got[s]) for s in from_old)
    assert len(model_values(got[24])) > 40  # losses, every load statistic, per layer


def test_moe_lm_counts_active_parameters_and_keeps_dense_blocks():
    cfg = ModelSection(dim=DIM, n_layers=3, n_heads=2, n_kv_heads=1, ffn_hidden=HIDDEN)
    moe = MoESection(num_experts=4, top_k=2, skip_first_n_moe=1)
    model = MoELM(cfg, moe)
    assert not isinstance(model.blocks[0].ffn, MoEFFN)
    assert [f.layer_idx for f in model.moe_ffns()] == [1, 2]
    per_expert = 3 * DIM * (HIDDEN // 2)
    assert model.num_params() - model.num_active_params() == 2 * (4 - 2) * per_expert
    dense = LM(cfg)
    # equal active parameters to the dense model, plus the routers
    assert model.num_active_params() == dense.num_params() + 2 * DIM * 4
    # LM.init_weights hands the FFN its stds; the router keeps its own small one
    ffn = model.moe_ffns()[0]
    assert math.isclose(ffn.experts.w1_EFD.std().item(), cfg.init_std, rel_tol=0.2)
    assert math.isclose(ffn.router.weight_ED.std().item(), moe.router_init_std, rel_tol=0.3)


def test_expert_softmax_equals_the_last_dim_softmax_with_its_gradient():
    logits = (torch.randn(300, 8) * 3).requires_grad_(True)
    reference = logits.detach().clone().requires_grad_(True)
    grad_TE = torch.randn(300, 8)
    probs = expert_softmax(logits)
    probs.backward(grad_TE)
    reference.softmax(dim=-1).backward(grad_TE)
    torch.testing.assert_close(probs, reference.softmax(dim=-1), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(logits.grad, reference.grad, atol=1e-6, rtol=1e-5)


def test_cpu_bf16_slots_combine_in_bf16_and_fp32_slots_in_fp32():
    y_SD, gates_S = torch.randn(6, 4), torch.rand(6)
    token_S = torch.tensor([0, 2, 1, 0, 2, 1])
    expected_TD = torch.zeros(3, 4)
    for s, t in enumerate(token_S.tolist()):
        expected_TD[t] += gates_S[s] * y_SD[s]
    out_fp32 = combine_slots(y_SD, gates_S, token_S, 3)
    out_bf16 = combine_slots(y_SD.bfloat16(), gates_S, token_S, 3)
    assert out_fp32.dtype == torch.float32 and out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out_fp32, expected_TD, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out_bf16.float(), expected_TD, atol=0.05, rtol=0.02)


def test_permuted_combine_and_repeat_equal_their_formulas_with_gradients():
    # slot s = (token s // K, choice s % K); row i of y_SD is slot order_S[i] (expert order)
    T, K, D = 9, 3, 5
    order_S = torch.randperm(T * K, generator=torch.Generator().manual_seed(3))
    rank_S = slot_ranks(order_S)
    assert torch.equal(order_S[rank_S], torch.arange(T * K))
    y_SD = torch.randn(T * K, D, dtype=torch.float64, requires_grad=True)
    gates_TK = torch.rand(T, K, dtype=torch.float64, requires_grad=True)
    grad_TD = torch.randn(T, D, dtype=torch.float64)
    out_TD = combine_permuted(y_SD, order_S, gates_TK)
    out_TD.backward(grad_TD)
    y_ref, gates_ref = y_SD.detach().clone().requires_grad_(), gates_TK.detach().clone()
    gates_ref.requires_grad_()
    expected_TD = torch.stack([sum(gates_ref[t, k] * y_ref[rank_S[t * K + k]] for k in range(K))
                               for t in range(T)])
    expected_TD.backward(grad_TD)
    for got, want in ((out_TD, expected_TD), (y_SD.grad, y_ref.grad),
                      (gates_TK.grad, gates_ref.grad)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    # the way out: every token copied to its K slots; its gradient sums theirs
    x_TD = torch.randn(T, D, dtype=torch.float64, requires_grad=True)
    x_SD = _RepeatRows.apply(x_TD, order_S // K, rank_S, K)
    assert torch.equal(x_SD, x_TD.detach()[order_S // K])
    grad_SD = torch.randn(T * K, D, dtype=torch.float64)
    x_SD.backward(grad_SD)
    expected = torch.zeros(T, D, dtype=torch.float64).index_add_(0, order_S // K, grad_SD)
    torch.testing.assert_close(x_TD.grad, expected, atol=1e-12, rtol=1e-12)
