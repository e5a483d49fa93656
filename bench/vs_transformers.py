"""Benchmark: moedesk's LMs against transformers' Llama and Mixtral, built from equal configs.

dense (profiles/dense.toml) vs `LlamaForCausalLM`, top2 (profiles/top2.toml) vs
`MixtralForCausalLM` with its fastest experts implementation (eager and grouped_mm are
timed for a few steps first and the faster kept, per cell; batched_mm gathers one weight
matrix per (token, expert) slot, 4096 x 704 x 256 floats = 2.9 GB per layer here, and is
left out). Both models get
the same weights (`copy_weights`; transformers' RoPE rotates channel halves, moedesk rotates
(even, odd) pairs, so query/key rows are permuted per head) and the script asserts equal
parameter counts and fp32 logits equal to 1e-6 of the largest logit before timing anything.

A step is the training loop's: forward, loss (moedesk adds its router z-loss), backward,
gradient clip, fused AdamW, zero_grad (and moedesk's bias update): 16x128 byte tokens of
the profile's own grammar data. fp32 and bf16 autocast x 1 and 2 threads; inside a cell
the two models alternate step by step, and the figure is the median of the per-iteration
ratios transformers/moedesk (> 1: moedesk is faster). Wall clock.

    .venv/bin/python bench/vs_transformers.py [--reps 9] [--threads 1,2]
        [--precision fp32,bf16] [--kinds dense,top2] [--allocator trainer|glibc]
    .venv/bin/python bench/vs_transformers.py --floor       # + each side's kernel floor and
                                                            # the ceiling (moedesk/train/kernel_floor.py)
    .venv/bin/python bench/vs_transformers.py --check       # the equality checks only
    .venv/bin/python bench/vs_transformers.py --curves 300  # losses over 300 steps, + seed noise
                                                            # (3 seeds' spread)
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from moedesk.profiles import load_profile
from moedesk.profiles.schema import CPU_MATMULS
from moedesk.train import matmul
from moedesk.train.data import LMData
from moedesk.train.kernel_floor import record
from moedesk.train.loop import build_model
from moedesk.train.optim import build_optimizer, lr_at, param_groups, set_lr
from moedesk.train.system import ALLOCATOR_HELP, ALLOCATORS, use_allocator

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
KINDS = {"dense": "dense", "top2": "top2"}  # bench name -> shipped profile
EXPERTS_IMPLEMENTATIONS = ("eager", "grouped_mm")  # see the docstring for batched_mm


def hf_config(profile):
    """The transformers config equal to a moedesk profile's model (and MoE) sections."""
    import transformers

    m = profile.model
    common = dict(vocab_size=m.vocab_size, hidden_size=m.dim, num_hidden_layers=m.n_layers,
                  num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads,
                  max_position_embeddings=m.max_seq_len, rms_norm_eps=m.norm_eps,
                  rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta},
                  tie_word_embeddings=m.tie_embeddings, attention_dropout=0.0,
                  hidden_act="silu", initializer_range=m.init_std, use_cache=False)
    from moedesk.profiles.sizing import dense_ffn_hidden, expert_hidden
    if profile.kind == "topk":
        return transformers.MixtralConfig(
            intermediate_size=expert_hidden(m, profile.moe), num_local_experts=profile.moe.num_experts,
            num_experts_per_tok=profile.moe.top_k, router_jitter_noise=0.0,
            sliding_window=None, **common)
    return transformers.LlamaConfig(intermediate_size=dense_ffn_hidden(m), attention_bias=False,
                                    mlp_bias=False, **common)


def build_hf(profile, experts: str = "grouped_mm"):
    import transformers

    config = hf_config(profile)
    config._attn_implementation = "sdpa"
    if profile.kind == "topk":
        config._experts_implementation = experts
        return transformers.MixtralForCausalLM(config)
    return transformers.LlamaForCausalLM(config)


def rope_perm(n_heads: int, head_dim: int) -> torch.Tensor:
    """Row order turning moedesk's (even, odd) rotary pairs into transformers' halves."""
    per_head = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return torch.cat([h * head_dim + per_head for h in range(n_heads)])


@torch.no_grad()
def copy_weights(md, hf) -> None:
    """Put moedesk model `md`'s weights into transformers model `hf`."""
    cfg = md.cfg
    head_dim = cfg.dim // cfg.n_heads
    q_perm, k_perm = rope_perm(cfg.n_heads, head_dim), rope_perm(cfg.n_kv_heads, head_dim)
    hf.model.embed_tokens.weight.copy_(md.tok_embeddings.weight)
    if not cfg.tie_embeddings:
        hf.lm_head.weight.copy_(md.output.weight)
    hf.model.norm.weight.copy_(md.norm.weight)
    for block, layer in zip(md.blocks, hf.model.layers, strict=True):
        layer.input_layernorm.weight.copy_(block.attn_norm.weight)
        layer.post_attention_layernorm.weight.copy_(block.ffn_norm.weight)
        attn = layer.self_attn
        attn.q_proj.weight.copy_(block.attn.wq.weight[q_perm])
        attn.k_proj.weight.copy_(block.attn.wk.weight[k_perm])
        attn.v_proj.weight.copy_(block.attn.wv.weight)
        attn.o_proj.weight.copy_(block.attn.wo.weight)
        ffn = block.ffn
        if hasattr(ffn, "experts"):
            layer.mlp.gate.weight.copy_(ffn.router.weight_ED)
            ex = ffn.experts
            layer.mlp.experts.gate_up_proj.copy_(torch.cat([ex.w1_EFD, ex.w3_EFD], dim=1))
            layer.mlp.experts.down_proj.copy_(ex.w2_EDF)
        else:
            layer.mlp.gate_proj.weight.copy_(ffn.w1.weight)
            layer.mlp.up_proj.weight.copy_(ffn.w3.weight)
            layer.mlp.down_proj.weight.copy_(ffn.w2.weight)


def make_pair(name: str, seed: int = 0, experts: str = "grouped_mm", batch: int | None = None,
              overrides: dict | None = None):
    """(profile, moedesk model, transformers model) with equal weights."""
    overrides = {**(overrides or {}), **({} if batch is None else {"train.batch_size": batch})}
    profile = load_profile(PROFILES / f"{KINDS[name]}.toml", overrides)
    torch.manual_seed(seed)
    md = build_model(profile)
    hf = build_hf(profile, experts)
    copy_weights(md, hf)
    return profile, md, hf


def check_equal(name: str, tol: float = 1e-6) -> float:
    """Assert equal parameter counts and fp32 logits within `tol` of the largest logit
    (a few ulps: the CPU's matmul kernels decide the rounding, 1.2e-6 and 1.4e-6 absolute
    at logits up to 3.4 on an AVX-512 Xeon); returns the max difference relative to it."""
    profile, md, hf = make_pair(name)
    n_md, n_hf = md.num_params(), sum(p.numel() for p in hf.parameters())
    assert n_md == n_hf, f"{name}: moedesk has {n_md:,} parameters, transformers {n_hf:,}"
    md.eval(), hf.eval()
    idx_BT = torch.randint(0, profile.model.vocab_size, (2, profile.data.seq_len),
                           generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits_BTV = md(idx_BT)[0]
        diff = (logits_BTV - hf(input_ids=idx_BT).logits).abs().max().item()
    diff /= max(1.0, logits_BTV.abs().max().item())
    assert diff <= tol, f"{name}: logits differ by {diff:.3g} of the largest (> {tol})"
    return diff


def hf_loss(hf, x_BT, y_BT):
    logits_BTV = hf(input_ids=x_BT).logits
    return F.cross_entropy(logits_BTV.float().flatten(0, 1), y_BT.flatten())


def hf_optimizer(hf, cfg):
    return torch.optim.AdamW(param_groups(hf, cfg.weight_decay), lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2), fused=True)


class Stepper:
    """One implementation's training step (the same recipe for both)."""

    def __init__(self, model, profile, is_moedesk: bool):
        self.model, self.profile, self.is_moedesk = model, profile, is_moedesk
        model.train()
        self.optimizer = (build_optimizer(model, profile.train) if is_moedesk
                          else hf_optimizer(model, profile.train))
        self.params = [p for p in model.parameters() if p.requires_grad]

    def loss(self, x_BT, y_BT):
        if self.is_moedesk:
            _, loss = self.model(x_BT, y_BT)
            return loss, self.model.extra_loss()
        return hf_loss(self.model, x_BT, y_BT), None

    def __call__(self, x_BT, y_BT, bf16: bool) -> tuple[float, float]:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, extra = self.loss(x_BT, y_BT)
        (loss if extra is None else loss + extra).backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.profile.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.is_moedesk:
            self.model.after_optimizer_step()
        return time.perf_counter() - start, loss.item()


def batches(profile, n: int, seed: int = 0) -> list:
    data = LMData(profile.data, seed, profile.train.batch_size, profile.model.vocab_size,
                  torch.device("cpu"))
    return [data.train_batch() for _ in range(n)]


def fastest_experts(bf16: bool, data: list, rounds: int = 7) -> tuple[str, dict[str, float]]:
    """The Mixtral experts implementation with the lowest median step here and now: the
    implementations alternate step by step for `rounds` rounds (the first, a warm-up,
    dropped), so a slow moment of a shared machine cannot pick the slower one."""
    steppers = {}
    for impl in EXPERTS_IMPLEMENTATIONS:
        profile, _, hf = make_pair("top2", experts=impl)
        steppers[impl] = Stepper(hf, profile, is_moedesk=False)
    runs: dict[str, list[float]] = {impl: [] for impl in EXPERTS_IMPLEMENTATIONS}
    for i in range(rounds + 1):
        for impl, step in steppers.items():
            elapsed = step(*data[i % len(data)], bf16)[0]
            if i:
                runs[impl].append(elapsed)
    times = {impl: 1e3 * statistics.median(v) for impl, v in runs.items()}
    return min(times, key=times.get), times


def time_cell(name: str, bf16: bool, reps: int, data: list, floor: bool = False) -> dict:
    """Median step times and ratio of one cell; with `floor`, also each side's kernel floor
    (kernel_floor.py: its matmuls and attention kernels replayed alone, interleaved with
    the steps) and the ceiling, transformers' step / moedesk's floor: the largest ratio any
    implementation calling moedesk's kernels could reach."""
    experts, probe = ("-", {})
    if name == "top2":
        experts, probe = fastest_experts(bf16, data)
    profile, md, hf = make_pair(name, experts=experts if name == "top2" else "grouped_mm")
    steppers = {"moedesk": Stepper(md, profile, True), "hf": Stepper(hf, profile, False)}
    floors = {}
    ratios, ceilings = [], []
    times = {who: [] for who in ("moedesk", "hf", "moedesk floor", "hf floor")}
    for rep in range(reps + 1):  # round 0 warms up and is dropped
        x_BT, y_BT = data[rep % len(data)]
        order = ("moedesk", "hf") if rep % 2 else ("hf", "moedesk")  # neither always first
        if floor and rep == 1:  # one more (recorded) step each, after the warm-up
            floors = {who: record(partial(steppers[who], x_BT, y_BT, bf16)) for who in order}
        step_s = {who: steppers[who](x_BT, y_BT, bf16)[0] for who in order}
        step_s.update({f"{who} floor": floors[who].replay() for who in order if who in floors})
        if rep:
            ratios.append(step_s["hf"] / step_s["moedesk"])
            if floors:
                ceilings.append(step_s["hf"] / step_s["moedesk floor"])
            for who in step_s:
                times[who].append(step_s[who])
    cell = {"experts": experts, "probe": probe, "ratio": statistics.median(ratios)}
    cell.update({f"{who.replace(' ', '_')}_ms": 1e3 * statistics.median(v)
                 for who, v in times.items() if v})
    if ceilings:
        cell["ceiling"] = statistics.median(ceilings)
    return cell


# the two implementations' per-step losses count as equal while they differ by less than this
EQUAL_LOSS = 1e-4
# the loss curves train the objective Mixtral trains: the shipped top2 adds a router z-loss
# and moves its balancing bias every step, which Mixtral has no counterpart for
SAME_OBJECTIVE = {"top2": {"moe.z_loss_weight": 0.0, "moe.bias_balancing": False}}


def curves(steps: int, kinds: list[str], threads: int) -> None:
    """Losses of both implementations from equal weights on equal batches, against seed
    noise: the spread of moedesk's mean loss over three seeds (init only; same batches).
    top2 trains Mixtral's objective (`SAME_OBJECTIVE`: no z-loss, no balancing bias).

    From equal weights the two runs agree to float rounding until rounding differences
    grow through training (chaotically, at the warmup's peak learning rate); after that
    they are as far apart as two runs of one implementation can be, so the comparison
    that means something is the final losses against the seeds' spread."""
    torch.set_num_threads(threads)
    for name in kinds:
        overrides = SAME_OBJECTIVE.get(name, {})
        profile = make_pair(name, overrides=overrides)[0]
        data = batches(profile, steps)
        runs = {}
        for label, seed, hf_side in (("moedesk seed 0", 0, False),
                                     ("transformers seed 0", 0, True),
                                     ("moedesk seed 1", 1, False),
                                     ("moedesk seed 2", 2, False)):
            profile, md, hf = make_pair(name, seed=seed, overrides=overrides)
            step = Stepper(hf if hf_side else md, profile, is_moedesk=not hf_side)
            losses = []
            for i, (x_BT, y_BT) in enumerate(data, start=1):
                set_lr(step.optimizer, lr_at(i, profile.train))
                losses.append(step(x_BT, y_BT, False)[1])
            runs[label] = losses
        gaps = [abs(a - b) for a, b in zip(runs["moedesk seed 0"], runs["transformers seed 0"],
                                           strict=True)]
        equal_until = next((i for i, g in enumerate(gaps) if g >= EQUAL_LOSS), len(gaps))
        tail = max(1, steps // 6)
        means = {label: statistics.fmean(v[-tail:]) for label, v in runs.items()}
        print(f"{name}: mean train loss over steps {steps - tail + 1}-{steps} (fp32, "
              f"{threads} thread(s), lr schedule of the profile's {profile.train.steps} steps"
              + "".join(f", {k} = {v}" for k, v in overrides.items()) + ")")
        for label, mean in means.items():
            print(f"  {label:<22} {mean:.4f}")
        print(f"  per-step losses equal (|diff| < {EQUAL_LOSS:g}) for the first {equal_until} "
              f"steps (largest |diff| there "
              f"{max(gaps[:equal_until], default=0.0):.1e}), then apart by rounding")
        impl_gap = abs(means["moedesk seed 0"] - means["transformers seed 0"])
        seeds = [means[f"moedesk seed {s}"] for s in range(3)]
        spread = max(seeds) - min(seeds)
        print(f"  |moedesk - transformers| {impl_gap:.4f}   seed noise (spread of 3 seeds) "
              f"{spread:.4f}   {'within' if impl_gap <= spread else 'OUTSIDE'} seed noise")


def main() -> None:
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--precision", default="fp32,bf16")
    parser.add_argument("--kinds", default="dense,top2")
    parser.add_argument("--check", action="store_true", help="only the equality checks")
    parser.add_argument("--curves", type=int, default=0, metavar="STEPS",
                        help="train both for STEPS steps and compare losses with seed noise")
    parser.add_argument("--allocator", choices=ALLOCATORS, default="trainer",
                        help=ALLOCATOR_HELP + " (for both sides)")
    parser.add_argument("--cpu-matmul", choices=CPU_MATMULS, default="auto",
                        help="moedesk's fp32 CPU matmul kernel ([train] cpu_matmul)")
    parser.add_argument("--floor", action="store_true",
                        help="also each side's kernel floor (its matmuls and attention "
                             "kernels alone) and the ceiling: transformers' step over "
                             "moedesk's floor")
    args = parser.parse_args()
    use_allocator(args.allocator)
    kinds = args.kinds.split(",")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"cpu {torch.backends.cpu.get_cpu_capability()} {matmul.cpu_vendor()}, moedesk's "
          f"fp32 CPU matmuls on {matmul.set_kernel(args.cpu_matmul)}")
    for name in kinds:
        print(f"{name}: parameters equal, fp32 logits max |diff| / max |logit| "
              f"{check_equal(name):.2e}")
    if args.check:
        return
    if args.curves:
        curves(args.curves, kinds, int(args.threads.split(",")[-1]))
        return
    print(f"step = fwd+bwd+clip+fused AdamW, 16x128 tokens, median of {args.reps} interleaved "
          f"per-iteration ratios (> 1: moedesk faster)")
    print(f"{'model':>6} {'vs':>8} {'prec':>5} {'thr':>3} {'moedesk ms':>10} {'hf ms':>8} "
          f"{'hf/moedesk':>10}"
          + (f" {'md floor':>8} {'hf floor':>8} {'ceiling':>7}" if args.floor else "")
          + "  experts (probe ms)")
    threads_before = torch.get_num_threads()
    for name in kinds:
        data = batches(make_pair(name)[0], 4)
        for precision in args.precision.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                torch.set_num_threads(threads)
                cell = time_cell(name, precision == "bf16", args.reps, data, args.floor)
                probe = " ".join(f"{k}={v:.0f}" for k, v in cell["probe"].items())
                floors = (f" {cell['moedesk_floor_ms']:>8.0f} {cell['hf_floor_ms']:>8.0f} "
                          f"{cell['ceiling']:>6.2f}x" if args.floor else "")
                print(f"{name:>6} {'Mixtral' if name == 'top2' else 'Llama':>8} {precision:>5} "
                      f"{threads:>3} {cell['moedesk_ms']:>10.0f} {cell['hf_ms']:>8.0f} "
                      f"{cell['ratio']:>9.2f}x{floors}  {cell['experts']} {probe}", flush=True)
    torch.set_num_threads(threads_before)


if __name__ == "__main__":
    main()
