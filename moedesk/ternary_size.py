"""Sizes of the ternary kind's model from a Profile: trits, and bytes three ways.

Pure Python (no torch) for `moedesk size` and the TUI. Counts follow
`moedesk/train/ternary` exactly (a test compares them with the built model):
- router: E specialization vectors of D trits, C = ceil(E / cluster_size) centroids of D
  trits when hierarchical, and E float64 load counters;
- experts: per expert the weight trits of every layer (input -> hidden ... -> output)
  plus one float32 dead-zone threshold per output unit of every layer.
Trits are shown as int8 (one byte each, as checkpoints store them), packed 5 per byte
(TritPack5, 3^5 = 243 <= 256) and as the float32 mirror the trainer multiplies with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moedesk.profiles.schema import Profile, TernarySection
from moedesk.sizing import SizeReport, human_bytes, human_count

COUNTER_BYTES = 8  # float64 load counter per expert
THRESHOLD_BYTES = 4  # float32 dead zone per unit


def packed_bytes(trits: int) -> int:
    """Bytes for `trits` packed 5 per byte (TritPack5)."""
    return math.ceil(trits / 5)


def layer_shapes(t: TernarySection) -> list[tuple[int, int]]:
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
