"""moedesk -> transformers: LlamaForCausalLM (dense) and MixtralForCausalLM (topk).

Why these targets: moedesk's blocks are Llama blocks (RMSNorm, grouped-query attention
with RoPE, SwiGLU, no biases, optionally tied head), and its top-k MoE routes like
Mixtral's (softmax over all experts, top-k, the chosen weights renormalised to sum 1),
so both load everywhere transformers does with no custom code.

The mapping (per block i; `permute` reorders each head's rows from moedesk's interleaved
RoPE pairs (0,1),(2,3).. to transformers' rotate-half pairs (0,H/2),(1,H/2+1)..; q.k is
unchanged because q and k move alike):
  tok_embeddings.weight           -> model.embed_tokens.weight
  blocks.i.attn_norm.weight       -> model.layers.i.input_layernorm.weight
  blocks.i.attn.wq/wk.weight      -> model.layers.i.self_attn.q_proj/k_proj.weight (permute)
  blocks.i.attn.wv/wo.weight      -> model.layers.i.self_attn.v_proj/o_proj.weight
  blocks.i.ffn_norm.weight        -> model.layers.i.post_attention_layernorm.weight
  dense FFN w1 / w3 / w2          -> mlp.gate_proj / up_proj / down_proj (Llama)
  router.weight_ED                -> mlp.gate.weight (Mixtral)
  experts.w1_EFD ++ w3_EFD (dim 1)-> mlp.experts.gate_up_proj [E, 2F, D]
  experts.w2_EDF                  -> mlp.experts.down_proj [E, D, F]
  norm.weight, output.weight      -> model.norm.weight, lm_head.weight
What Mixtral cannot say, and what the export does about it:
  - dense blocks among MoE ones (`moe.moe_layers`, `skip_first_n_moe`): exactly
    expressed, as E identical experts holding the dense FFN (gates sum to 1); widths
    that differ are zero-padded (zero rows add silu(0) * 0 = 0). Exact; costs file size.
  - the aux-loss-free routing bias (`expert_bias_E`) picks experts in moedesk but does
    not exist in Mixtral: dropped; its effect is measured (max |logit change|, loss).
  - capacity dropping (`moe.capacity_factor` > 0): Mixtral is dropless; measured too.
  Training-only settings (dropout, router noise, expert dropout, the losses) do not
  change inference. `strict=True` refuses any export that is not exact.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from moedesk.data.tokenizer import EOT, Tokenizer, byte_level_tokenizer_json
from moedesk.profiles import Profile, profile_from_dict
from moedesk.profiles.schema import LM_KINDS
from moedesk.profiles.sizing import dense_ffn_hidden, expert_hidden, moe_layer_indices
from moedesk.train.checkpoint import CheckpointError, load_checkpoint
from moedesk.train.moe import MoEFFN

EXPORT_FILE = "moedesk_export.json"
LOGIT_TOLERANCE = 1e-4


class ExportError(Exception):
    """A checkpoint that cannot be exported (or not exactly, under strict)."""


@dataclass
class ExportReport:
    out: str
    architecture: str
    source: dict
    exact: bool
    max_abs_logit_diff: float  # transformers (reloaded from `out`) vs moedesk as exported
    approximations: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def permute_rope(w: Tensor, n_heads: int) -> Tensor:
    """Rows [heads * H, D] from interleaved RoPE pairs to rotate-half order."""
    rows, cols = w.shape
    head = rows // n_heads
    return w.view(n_heads, head // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _pad_rows(w: Tensor, n: int) -> Tensor:
    return torch.cat([w, w.new_zeros(n - w.shape[0], *w.shape[1:])]) if w.shape[0] < n else w


def hf_config(profile: Profile, tokenizer: Tokenizer):
    m = profile.model
    common = dict(vocab_size=m.vocab_size, hidden_size=m.dim, num_hidden_layers=m.n_layers,
                  num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads,
                  head_dim=m.dim // m.n_heads, max_position_embeddings=m.max_seq_len,
                  rms_norm_eps=m.norm_eps, hidden_act="silu", attention_dropout=0.0,
                  rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta},
                  tie_word_embeddings=m.tie_embeddings, initializer_range=m.init_std,
                  bos_token_id=None, eos_token_id=getattr(tokenizer, "eot_id", None),
                  pad_token_id=getattr(tokenizer, "eot_id", None), dtype="float32")
    if profile.kind == "dense":
        from transformers import LlamaConfig

        return LlamaConfig(intermediate_size=dense_ffn_hidden(m), attention_bias=False,
                           mlp_bias=False, **common)
    from transformers import MixtralConfig

    e = profile.moe
    width = expert_hidden(m, e)
    if len(moe_layer_indices(m, e)) < m.n_layers:
        width = max(width, dense_ffn_hidden(m))
    return MixtralConfig(intermediate_size=width, num_local_experts=e.num_experts,
                         num_experts_per_tok=e.top_k, router_aux_loss_coef=e.aux_loss_weight,
                         router_jitter_noise=0.0, output_router_logits=False,
                         sliding_window=None, **common)


def hf_state_dict(model, profile: Profile, width: int | None = None) -> dict[str, Tensor]:
    """The transformers state dict of a moedesk LM (see the module docstring's table)."""
    m, sd = profile.model, {k: v.detach().float() for k, v in model.state_dict().items()}
    out = {"model.embed_tokens.weight": sd["tok_embeddings.weight"],
           "model.norm.weight": sd["norm.weight"], "lm_head.weight": sd["output.weight"]}
    for i, block in enumerate(model.blocks):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = sd[src + "attn_norm.weight"]
        out[dst + "post_attention_layernorm.weight"] = sd[src + "ffn_norm.weight"]
        out[dst + "self_attn.q_proj.weight"] = permute_rope(sd[src + "attn.wq.weight"], m.n_heads)
        out[dst + "self_attn.k_proj.weight"] = permute_rope(sd[src + "attn.wk.weight"],
                                                            m.n_kv_heads)
        out[dst + "self_attn.v_proj.weight"] = sd[src + "attn.wv.weight"]
        out[dst + "self_attn.o_proj.weight"] = sd[src + "attn.wo.weight"]
        if profile.kind == "dense":
            out[dst + "mlp.gate_proj.weight"] = sd[src + "ffn.w1.weight"]
            out[dst + "mlp.up_proj.weight"] = sd[src + "ffn.w3.weight"]
            out[dst + "mlp.down_proj.weight"] = sd[src + "ffn.w2.weight"]
            continue
        E = profile.moe.num_experts
        if isinstance(block.ffn, MoEFFN):
            router = sd[src + "ffn.router.weight_ED"]
            w1, w3 = sd[src + "ffn.experts.w1_EFD"], sd[src + "ffn.experts.w3_EFD"]
            w2 = sd[src + "ffn.experts.w2_EDF"]
        else:  # a dense block: E identical experts (any routing gives the dense output)
            router = torch.zeros(E, m.dim)
            w1, w3 = (sd[src + f"ffn.{n}.weight"].expand(E, -1, -1) for n in ("w1", "w3"))
            w2 = sd[src + "ffn.w2.weight"].expand(E, -1, -1)
        F = width or w1.shape[1]
        w1 = torch.stack([_pad_rows(w, F) for w in w1])
        w3 = torch.stack([_pad_rows(w, F) for w in w3])
        w2 = torch.stack([_pad_rows(w.T, F).T for w in w2])
        out[dst + "mlp.gate.weight"] = router
        out[dst + "mlp.experts.gate_up_proj"] = torch.cat([w1, w3], dim=1).contiguous()
        out[dst + "mlp.experts.down_proj"] = w2.contiguous()
    return out


@torch.no_grad()
def _logits(model, idx_BT: Tensor) -> Tensor:
    model.eval()
    return model(idx_BT)[0].float()


def _batch(profile: Profile) -> Tensor:
    """Validation windows of the run's data, or seeded random ids when it is gone."""
    from moedesk.train.data import DataError, LMData

    try:
        data = LMData(profile.data, profile.seed, 4, profile.model.vocab_size)
        return data.val_batches(1)[0][0]
    except DataError:
        gen = torch.Generator().manual_seed(0)
        return torch.randint(profile.model.vocab_size, (4, profile.data.seq_len), generator=gen)


def _approximations(model, profile: Profile, idx_BT: Tensor, exact_model) -> list[dict]:
    """What the target cannot express, each measured as (moedesk's logits) vs (the
    exported function: moedesk with that feature removed) on the same batch."""
    out = []
    ffns = [f for f in model.modules() if isinstance(f, MoEFFN)]
    if not ffns:
        return out
    reference = _logits(model, idx_BT)
    exported = _logits(exact_model, idx_BT)
    x, y = idx_BT[:, :-1], idx_BT[:, 1:]
    biased = profile.moe.bias_balancing and any(bool(f.expert_bias_E.abs().max() > 0)
                                                for f in ffns)
    what = []
    if biased:
        what.append(("moe.expert_bias_E", "the aux-loss-free routing bias (Mixtral has none); "
                     "dropped", max(float(f.expert_bias_E.abs().max()) for f in ffns)))
    if profile.moe.capacity_factor > 0:
        what.append(("moe.capacity_factor", "capacity dropping (Mixtral is dropless); the "
                     "export routes every token", profile.moe.capacity_factor))
    if not what:
        return out
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        ref_loss = float(loss(_logits(model, x).flatten(0, 1), y.flatten()))
        exp_loss = float(loss(_logits(exact_model, x).flatten(0, 1), y.flatten()))
    agree = float((reference.argmax(-1) == exported.argmax(-1)).float().mean())
    for key, text, value in what:
        out.append({"key": key, "what": text, "value": value,
                    "max_abs_logit_diff": float((reference - exported).abs().max()),
                    "loss_moedesk": ref_loss, "loss_exported": exp_loss,
                    "top1_agreement": agree, "tokens": int(idx_BT.numel())})
    return out


def exported_function(model, profile: Profile):
    """A copy of the moedesk model computing what the export computes: no routing bias,
    dropless (the reference the transformers model must match within 1e-4)."""
    import copy

    from moedesk.profiles.schema import MoESection

    twin = copy.deepcopy(model)
    if profile.kind == "topk":
        moe = MoESection(**{**asdict(profile.moe), "capacity_factor": 0.0,
                            "bias_balancing": False})
        for ffn in twin.modules():
            if isinstance(ffn, MoEFFN):
                ffn.cfg, ffn.router.cfg = moe, moe
                ffn.expert_bias_E.zero_()
    return twin


def hf_tokenizer(tokenizer: Tokenizer, max_len: int):
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast

    if tokenizer.kind == "bytes":
        return PreTrainedTokenizerFast(tokenizer_object=HFTokenizer.from_str(
            byte_level_tokenizer_json()), model_max_length=max_len, clean_up_tokenization_spaces=False)
    return PreTrainedTokenizerFast(tokenizer_object=HFTokenizer.from_str(tokenizer.json_text),
                                   eos_token=EOT, pad_token=EOT, model_max_length=max_len,
                                   clean_up_tokenization_spaces=False)


def export_checkpoint(checkpoint: Path, out: Path, run_dir: Path | None = None,
                      strict: bool = False, force: bool = False,
                      source: dict | None = None) -> ExportReport:
    """Write `out` (a transformers folder) from a moedesk checkpoint; ExportError when it
    cannot be done. Written into a temporary folder and moved into place at the end."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
    try:
        from transformers import AutoModelForCausalLM, GenerationConfig
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ExportError("export needs transformers: pip install 'moedesk[hf]'") from None
    from moedesk.train.loop import build_model
    from moedesk.train.sampling import SAMPLE_ERRORS, tokenizer_for

    hf_logging.disable_progress_bar()

    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not force:
        raise ExportError(f"--out {out} exists and is not empty; choose another folder or pass "
                          "--force to replace it")
    try:
        state = load_checkpoint(Path(checkpoint))
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    if state.get("kind") not in LM_KINDS:
        raise ExportError(f"checkpoint {checkpoint} is a {state.get('kind')!r} run; export "
                          "writes language models (dense or topk)")
    profile = profile_from_dict(state["config"])
    try:
        tokenizer = tokenizer_for(state["config"], run_dir or Path(checkpoint).parent.parent)
    except SAMPLE_ERRORS as exc:
        raise ExportError(f"no tokenizer to export: {exc}") from None
    model = build_model(profile)
    model.load_state_dict(state["model"])
    model.eval()
    exact_model = exported_function(model, profile)
    config = hf_config(profile, tokenizer)
    mapped = hf_state_dict(exact_model, profile, getattr(config, "intermediate_size", None))
    hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = hf_model.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise ExportError(f"transformers' {type(hf_model).__name__} does not take the mapped "
                          f"tensors (missing {missing[:3]}, unexpected {unexpected[:3]}); this "
                          "transformers version is not supported")
    idx_BT = _batch(profile)
    approximations = _approximations(model, profile, idx_BT, exact_model)
    if strict and approximations:
        raise ExportError("not exact (--strict): " + "; ".join(
            f"{a['key']}: {a['what']}, max |logit diff| {a['max_abs_logit_diff']:.3g}"
            for a in approximations))
    hf_model.generation_config = GenerationConfig(
        do_sample=True, temperature=profile.train.sample_temperature or 1.0,
        max_new_tokens=profile.train.sample_tokens, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        hf_tokenizer(tokenizer, profile.model.max_seq_len).save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        with torch.no_grad():
            theirs = reloaded(idx_BT).logits.float()
        diff = float((theirs - _logits(exact_model, idx_BT)).abs().max())
        if not math.isfinite(diff) or diff > LOGIT_TOLERANCE:
            raise ExportError(f"the exported model's logits differ from moedesk's by {diff:.3g} "
                              f"(> {LOGIT_TOLERANCE}); not written")
        arch = type(hf_model).__name__
        notes = []
        if profile.kind == "topk" and len(moe_layer_indices(profile.model, profile.moe)) < \
                profile.model.n_layers:
            notes.append("dense blocks are stored as identical experts (exact)")
        report = ExportReport(str(out), arch, {**(source or {}), "checkpoint": str(checkpoint),
                                               "step": state.get("step"), "kind": profile.kind,
                                               "tokenizer": tokenizer.describe()},
                              not approximations, diff, approximations, notes)
        (tmp / EXPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report
