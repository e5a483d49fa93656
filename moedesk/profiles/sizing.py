"""What a profile implies: total and active parameters and training memory, every kind.

Pure Python (no torch), so `moedesk size` answers before anything is built, and the one
definition of the derived widths (`dense_ffn_hidden`, `expert_hidden`, `moe_layer_indices`)
that the trainers build with. The LM counts follow moedesk/train/model.py exactly (a test
compares them with `sum(p.numel())` of the real model): Llama-style blocks without biases,
RMSNorm weights, grouped-query attention, SwiGLU FFNs, an optionally tied output head. For
topk runs each MoE block's FFN is a router (D x E) plus E SwiGLU experts of hidden F; a
token uses K.

The ternary kind counts trits and bytes three ways, following moedesk/train/ternary
exactly (a test compares them with the built model):
- router: E specialization vectors of D trits, C = ceil(E / cluster_size) centroids of D
  trits when hierarchical, and E float64 load counters;
- experts: per expert the weight trits of every layer (input -> hidden ... -> output)
  plus one float32 dead-zone threshold per output unit of every layer.
Trits are shown as int8 (one byte each, as checkpoints store them), packed 5 per byte
(TritPack5, 3^5 = 243 <= 256) and as the float32 mirror the trainer multiplies with.

Seed 001 quotes "~47M total / ~13M active" for 8 layers, dim 512, 8 experts top-2 (its
defaults: vocab 50257, 8 heads, 2 KV heads). No one reading gives both: 13/47 means the
non-expert weights are 3.6% of the total, but its attention alone is 5.2M (11%), and a
GPT-2 embedding adds 25.7M. Counting non-embedding parameters with experts of hidden 424
gives 47.0M total and 15.7M active; that is the closest (tests/unit/test_sizing.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from moedesk.profiles.schema import ModelSection, MoESection, Profile, TernarySection

BYTES_FP32 = 4
BYTES_BF16 = 2
# AdamW keeps two fp32 moments (exp_avg, exp_avg_sq) per parameter
ADAMW_STATE_BYTES = 2 * BYTES_FP32
COUNTER_BYTES = 8  # float64 load counter per ternary expert
THRESHOLD_BYTES = 4  # float32 dead zone per ternary unit


def dense_ffn_hidden(model: ModelSection) -> int:
    """`model.ffn_hidden`, or 8/3 * dim rounded up to a multiple of 32 when it is 0."""
    if model.ffn_hidden > 0:
        return model.ffn_hidden
    return 32 * math.ceil(8 * model.dim / 3 / 32)


def expert_hidden(model: ModelSection, moe: MoESection) -> int:
    """Hidden width F of one expert: `moe.expert_hidden`, or the dense FFN width / top_k
    so that K experts hold as many parameters as the dense FFN they replace."""
    if moe.expert_hidden > 0:
        return moe.expert_hidden
    return max(1, dense_ffn_hidden(model) // moe.top_k)


def moe_layer_indices(model: ModelSection, moe: MoESection) -> list[int]:
    """Blocks whose FFN is MoE: `moe.moe_layers`, else every block from skip_first_n_moe."""
    if moe.moe_layers:
        return sorted(moe.moe_layers)
    return list(range(moe.skip_first_n_moe, model.n_layers))


@dataclass
class SizeReport:
    kind: str
    total_params: int
    active_params: int
    embedding_params: int  # token embedding plus an untied output head
    attention_params: int
    ffn_params: int  # dense FFNs plus all experts and routers
    active_ffn_params: int
    norm_params: int

    @property
    def active_share(self) -> float:
        return self.active_params / self.total_params if self.total_params else 0.0

    @property
    def weights_fp32_bytes(self) -> int:
        return self.total_params * BYTES_FP32

    @property
    def weights_bf16_bytes(self) -> int:
        return self.total_params * BYTES_BF16

    @property
    def grads_bytes(self) -> int:
        # gradients have the parameters' dtype; parameters stay fp32 under bf16 autocast
        return self.total_params * BYTES_FP32

    @property
    def adamw_bytes(self) -> int:
        return self.total_params * ADAMW_STATE_BYTES

    @property
    def training_bytes(self) -> int:
        """fp32 weights + grads + AdamW state; activations and buffers not included."""
        return self.weights_fp32_bytes + self.grads_bytes + self.adamw_bytes

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in ("active_share", "weights_fp32_bytes", "weights_bf16_bytes", "grads_bytes",
                     "adamw_bytes", "training_bytes"):
            out[name] = getattr(self, name)
        return out

    def lines(self) -> list[str]:
        """A human summary (`moedesk size` prints these)."""
        return [
            f"parameters  total {human_count(self.total_params)}  "
            f"active {human_count(self.active_params)} ({self.active_share:.1%})",
            f"  embedding {human_count(self.embedding_params)}  "
            f"attention {human_count(self.attention_params)}  "
            f"ffn {human_count(self.ffn_params)} (active {human_count(self.active_ffn_params)})  "
            f"norms {human_count(self.norm_params)}",
            f"memory  weights fp32 {human_bytes(self.weights_fp32_bytes)}  "
            f"bf16 {human_bytes(self.weights_bf16_bytes)}  grads {human_bytes(self.grads_bytes)}"
            f"  AdamW {human_bytes(self.adamw_bytes)}  "
            f"training total {human_bytes(self.training_bytes)} (+ activations)",
        ]


def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _lm_size(profile: Profile, moe: bool) -> SizeReport:
    m = profile.model
    head_dim = m.dim // m.n_heads
    embedding = m.vocab_size * m.dim * (1 if m.tie_embeddings else 2)
    attention_per_block = (m.dim * m.n_heads * head_dim * 2  # wq, wo
                           + m.dim * m.n_kv_heads * head_dim * 2)  # wk, wv
    norms = 2 * m.dim * m.n_layers + m.dim  # attn_norm, ffn_norm per block, final norm
    dense_ffn = 3 * m.dim * dense_ffn_hidden(m)
    moe_blocks = set(moe_layer_indices(m, profile.moe)) if moe else set()
    ffn = active_ffn = 0
    for layer in range(m.n_layers):
        if layer in moe_blocks:
            num_experts, top_k = profile.moe.num_experts, profile.moe.top_k
            one_expert = 3 * m.dim * expert_hidden(m, profile.moe)
            router = m.dim * num_experts
            ffn += router + num_experts * one_expert
            active_ffn += router + top_k * one_expert
        else:
            ffn += dense_ffn
            active_ffn += dense_ffn
    shared = embedding + attention_per_block * m.n_layers + norms
    return SizeReport(kind=profile.kind, total_params=shared + ffn,
                      active_params=shared + active_ffn, embedding_params=embedding,
                      attention_params=attention_per_block * m.n_layers, ffn_params=ffn,
                      active_ffn_params=active_ffn, norm_params=norms)


def dense_size(profile: Profile) -> SizeReport:
    return _lm_size(profile, moe=False)


def topk_size(profile: Profile) -> SizeReport:
    return _lm_size(profile, moe=True)


def packed_bytes(trits: int) -> int:
    """Bytes for `trits` packed 5 per byte (TritPack5)."""
    return math.ceil(trits / 5)


def layer_shapes(t: TernarySection) -> list[tuple[int, int]]:
    """(inputs, outputs) of each layer of one ternary expert."""
    dims = [t.input_dim] + [t.hidden_dim] * (t.expert_layers - 1) + [t.output_dim]
    return list(zip(dims[:-1], dims[1:], strict=True))


@dataclass
class TernarySizeReport(SizeReport):
    num_experts: int = 0
    active_experts: int = 0
    spec_trits: int = 0  # all specialization vectors
    centroid_trits: int = 0
    expert_trits: int = 0  # one expert's weights
    expert_units: int = 0  # one expert's output units over its layers (thresholds)

    @property
    def router_trits(self) -> int:
        return self.spec_trits + self.centroid_trits

    @property
    def all_expert_trits(self) -> int:
        return self.num_experts * self.expert_trits

    @property
    def router_int8_bytes(self) -> int:
        return self.router_trits + self.num_experts * COUNTER_BYTES

    @property
    def router_packed_bytes(self) -> int:
        return packed_bytes(self.router_trits) + self.num_experts * COUNTER_BYTES

    @property
    def thresholds_bytes(self) -> int:
        return self.num_experts * self.expert_units * THRESHOLD_BYTES

    @property
    def experts_int8_bytes(self) -> int:
        return self.all_expert_trits + self.thresholds_bytes

    @property
    def experts_packed_bytes(self) -> int:
        return packed_bytes(self.all_expert_trits) + self.thresholds_bytes

    @property
    def experts_float32_bytes(self) -> int:
        return 4 * self.all_expert_trits + self.thresholds_bytes

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "total_params": self.total_params,
               "active_params": self.active_params, "active_share": self.active_share}
        for name in ("num_experts", "active_experts", "spec_trits", "centroid_trits",
                     "expert_trits", "expert_units", "router_trits", "all_expert_trits",
                     "router_int8_bytes", "router_packed_bytes", "experts_int8_bytes",
                     "experts_packed_bytes", "experts_float32_bytes"):
            out[name] = getattr(self, name)
        return out

    def lines(self) -> list[str]:
        return [
            f"trits  total {human_count(self.total_params)}  active per sample "
            f"{human_count(self.active_params)} ({self.active_share:.1%}): "
            f"{self.active_experts} of {self.num_experts} experts x "
            f"{human_count(self.expert_trits)} + every specialization",
            f"router  {human_count(self.router_trits)} trits: int8 "
            f"{human_bytes(self.router_int8_bytes)}  packed 5/byte "
            f"{human_bytes(self.router_packed_bytes)} (incl. load counters)",
            f"experts  {human_count(self.all_expert_trits)} trits: int8 "
            f"{human_bytes(self.experts_int8_bytes)}  packed 5/byte "
            f"{human_bytes(self.experts_packed_bytes)}  float32 while training "
            f"{human_bytes(self.experts_float32_bytes)} (incl. thresholds)",
        ]


def ternary_size(profile: Profile) -> TernarySizeReport:
    """The ternary model's trits and bytes (int8, packed 5/byte, float32 while training)."""
    t = profile.ternary
    shapes = layer_shapes(t)
    expert_trits = sum(i * o for i, o in shapes)
    spec = t.num_experts * t.specialization_dim
    centroids = (math.ceil(t.num_experts / t.cluster_size) * t.specialization_dim
                 if t.topology == "hierarchical" else 0)
    total = t.num_experts * expert_trits + spec
    active = t.active_experts * expert_trits + spec
    return TernarySizeReport(
        kind="ternary", total_params=total, active_params=active, embedding_params=0,
        attention_params=0, ffn_params=t.num_experts * expert_trits,
        active_ffn_params=t.active_experts * expert_trits, norm_params=0,
        num_experts=t.num_experts, active_experts=t.active_experts, spec_trits=spec,
        centroid_trits=centroids, expert_trits=expert_trits,
        expert_units=sum(o for _, o in shapes))


def model_size(profile: Profile) -> SizeReport:
    """Sizes of the model a profile builds, whatever its kind."""
    if profile.kind == "dense":
        return dense_size(profile)
    if profile.kind == "topk":
        return topk_size(profile)
    return ternary_size(profile)
