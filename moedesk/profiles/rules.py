"""Cross-field rules: constraints that involve more than one key of a profile.

Single-key types and ranges are declared in `schema.py`; everything that needs
two keys (or the file system) lives here, one small function per section, and so does
the check of a profile's `[health.RULE]` overrides against the health part's one table
(`moedesk.health.thresholds.RULES`): health knows nothing of profiles.
"""

from __future__ import annotations

import math
from pathlib import Path

from moedesk.health.thresholds import RULES
from moedesk.profiles.errors import Problem
from moedesk.profiles.schema import Profile


def _model_problems(p: Profile) -> list[Problem]:
    m, out = p.model, []
    if m.dim % m.n_heads:
        out.append(Problem("model.dim", f"got {m.dim}; must be divisible by model.n_heads ({m.n_heads})"))
    elif (m.dim // m.n_heads) % 2:
        out.append(Problem("model.dim", f"got {m.dim}; dim / n_heads = {m.dim // m.n_heads} must be "
                                        "even for rotary embeddings"))
    if m.n_heads % m.n_kv_heads:
        out.append(Problem("model.n_kv_heads", f"got {m.n_kv_heads}; must divide model.n_heads "
                                               f"({m.n_heads})"))
    if p.data.seq_len > m.max_seq_len:
        out.append(Problem("data.seq_len", f"got {p.data.seq_len}; must be <= model.max_seq_len "
                                           f"({m.max_seq_len})"))
    if p.data.source == "grammar" and m.vocab_size < 256:
        out.append(Problem("model.vocab_size", f"got {m.vocab_size}; byte-level data needs >= 256"))
    return out


def _moe_problems(p: Profile) -> list[Problem]:
    e, out = p.moe, []
    if e.top_k > e.num_experts:
        out.append(Problem("moe.top_k", f"got {e.top_k}; must be <= moe.num_experts ({e.num_experts})"))
    n_layers = p.model.n_layers
    bad = [i for i in e.moe_layers if not 0 <= i < n_layers]
    if bad:
        out.append(Problem("moe.moe_layers", f"got {e.moe_layers}; indices must be in 0..{n_layers - 1} "
                                             f"(model.n_layers = {n_layers})"))
    if len(set(e.moe_layers)) != len(e.moe_layers):
        out.append(Problem("moe.moe_layers", f"got {e.moe_layers}; indices must be distinct"))
    if not e.moe_layers and e.skip_first_n_moe >= n_layers:
        out.append(Problem("moe.skip_first_n_moe", f"got {e.skip_first_n_moe}; must be < model.n_layers "
                                                   f"({n_layers}) so at least one block is MoE"))
    if 0 < e.capacity_factor < 1.0 / e.num_experts:
        out.append(Problem("moe.capacity_factor", f"got {e.capacity_factor}; 0 (dropless) or >= "
                                                  f"1/num_experts"))
    return out


def _ternary_problems(p: Profile) -> list[Problem]:
    t, out = p.ternary, []
    if t.active_experts > t.num_experts:
        out.append(Problem("ternary.active_experts", f"got {t.active_experts}; must be <= "
                                                     f"ternary.num_experts ({t.num_experts})"))
    # Validate243Config: 243 experts need two-level selection (K <= 32 is the schema's range)
    if t.num_experts == 243 and t.topology != "hierarchical":
        out.append(Problem("ternary.topology", f"got {t.topology!r}; 243 experts need "
                                               "'hierarchical' selection (Validate243Config)"))
    if t.topology == "hierarchical":
        # clusters are consecutive runs of cluster_size ids, so they cover every expert;
        # only the last one may be short, and the K experts must fit in any chosen clusters
        num_clusters = math.ceil(t.num_experts / t.cluster_size)
        last = t.num_experts - (num_clusters - 1) * t.cluster_size
        if t.cluster_size > t.num_experts:
            out.append(Problem("ternary.cluster_size", f"got {t.cluster_size}; must be <= "
                                                       f"ternary.num_experts ({t.num_experts})"))
        elif num_clusters < 2:
            out.append(Problem("ternary.cluster_size", f"got {t.cluster_size}; makes a single "
                                                       "cluster, use topology = 'flat'"))
        elif t.active_clusters >= num_clusters:
            out.append(Problem("ternary.active_clusters",
                               f"got {t.active_clusters}; must be < the {num_clusters} clusters "
                               f"(ceil({t.num_experts} / {t.cluster_size})), else level 1 keeps "
                               "every cluster"))
        else:
            smallest = min(last + (t.active_clusters - 1) * t.cluster_size,
                           t.active_clusters * t.cluster_size)
            if smallest < t.active_experts:
                out.append(Problem("ternary.active_clusters",
                                   f"got {t.active_clusters}; the smallest {t.active_clusters} "
                                   f"clusters hold {smallest} experts (cluster_size "
                                   f"{t.cluster_size}, last cluster {last}), fewer than "
                                   f"active_experts ({t.active_experts})"))
    if p.data.source == "tokens":
        out.append(Problem("data.source", "got 'tokens'; ternary runs read 'grammar', 'text' or "
                                          "'trits'"))
    if p.train.device == "cuda":
        out.append(Problem("train.device", "got 'cuda'; ternary runs are CPU-only (use 'auto' "
                                           "or 'cpu')"))
    if p.train.grad_accum != 1:
        out.append(Problem("train.grad_accum", f"got {p.train.grad_accum}; a ternary step is "
                                               "one batch (Hebbian updates have no gradients "
                                               "to accumulate); use 1"))
    return out


def world_size(p: Profile) -> int:
    """Ranks of a run: processes per node times nodes (torchrun's WORLD_SIZE)."""
    return p.train.nproc_per_node * p.train.nnodes


def parse_endpoint(text: str) -> tuple[str, int] | None:
    """(host, port) of a HOST:PORT rendezvous endpoint, None when it is not one."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")  # [::1]:29500
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _dist_problems(p: Profile) -> list[Problem]:
    """Several processes or nodes (docs/distributed.md): the combination must make sense."""
    t, out = p.train, []
    world = world_size(p)
    if p.kind == "ternary" and world > 1:
        key = "train.nproc_per_node" if t.nproc_per_node > 1 else "train.nnodes"
        got = t.nproc_per_node if t.nproc_per_node > 1 else t.nnodes
        out.append(Problem(key, f"got {got}; the ternary kind trains in one process (its "
                                "Hebbian updates and load counters are not data parallel); "
                                "use 1"))
    if t.nnodes > 1 and not t.rdzv_endpoint:
        out.append(Problem("train.rdzv_endpoint", f"missing; train.nnodes = {t.nnodes} needs "
                                                  "the HOST:PORT every node meets at "
                                                  "(moedesk run --rdzv-endpoint HOST:PORT)"))
    if t.rdzv_endpoint and parse_endpoint(t.rdzv_endpoint) is None:
        out.append(Problem("train.rdzv_endpoint", f"got {t.rdzv_endpoint!r}; must be HOST:PORT "
                                                  "with a port in 1..65535, e.g. "
                                                  "10.0.0.1:29500"))
    ep = p.moe.expert_parallel
    if ep > 1:
        if p.kind != "topk":
            out.append(Problem("moe.expert_parallel", f"got {ep}; expert parallelism shards "
                                                      f"top-k experts, kind {p.kind!r} has "
                                                      "none; use 1"))
        elif p.moe.num_experts % ep:
            out.append(Problem("moe.expert_parallel", f"got {ep}; must divide moe.num_experts "
                                                      f"({p.moe.num_experts}) so every rank "
                                                      "holds as many experts"))
        elif world % ep:
            out.append(Problem("moe.expert_parallel", f"got {ep}; must divide the world size "
                                                      f"{world} (train.nproc_per_node "
                                                      f"{t.nproc_per_node} x train.nnodes "
                                                      f"{t.nnodes})"))
        elif p.moe.dispatch != "sorted":
            out.append(Problem("moe.dispatch", f"got {p.moe.dispatch!r}; expert parallelism "
                                               "exchanges the sorted slots, use 'sorted' (the "
                                               "mask loop is a one-process reference)"))
    return out


def _common_problems(p: Profile) -> list[Problem]:
    out = []
    # ternary training has no learning-rate schedule, so its warmup key is not read
    if p.kind != "ternary" and p.train.warmup_steps > p.train.steps:
        out.append(Problem("train.warmup_steps", f"got {p.train.warmup_steps}; must be <= train.steps "
                                                 f"({p.train.steps})"))
    if p.data.source == "trits" and p.kind != "ternary":
        out.append(Problem("data.source", f"got 'trits'; only ternary runs read trit files "
                                          f"(kind = {p.kind!r})"))
    if p.data.source in ("text", "tokens", "trits"):
        if not p.data.path:
            out.append(Problem("data.path", f"missing; data.source = {p.data.source!r} needs a file"))
        else:
            path = resolve_data_path(p)
            if not path.is_file():
                out.append(Problem("data.path", f"got {p.data.path!r}; no such file ({path})"))
    return out


def resolve_data_path(p: Profile) -> Path:
    """data.path as an absolute path: relative paths are taken from the profile's folder."""
    path = Path(p.data.path).expanduser()
    if not path.is_absolute() and p.path:
        path = Path(p.path).resolve().parent / path
    return path.resolve()


def cross_field_problems(p: Profile) -> list[Problem]:
    out = _common_problems(p) + _dist_problems(p)
    if p.kind in ("dense", "topk"):
        out += _model_problems(p)
    if p.kind == "topk":
        out += _moe_problems(p)
    if p.kind == "ternary":
        out += _ternary_problems(p)
    return out


def health_problems(overrides: dict) -> list[Problem]:
    """Problems in a profile's `[health.RULE]` tables (unknown rule, key or type)."""
    out = []
    for rule, table in overrides.items():
        if rule not in RULES:
            out.append(Problem(f"health.{rule}", "unknown key; allowed keys: stop_on, "
                                                 + ", ".join(RULES)))
            continue
        if not isinstance(table, dict):
            out.append(Problem(f"health.{rule}", f"got {table!r}; must be a table of thresholds"))
            continue
        params = RULES[rule].params
        for key, value in table.items():
            where = f"health.{rule}.{key}"
            if key not in params:
                out.append(Problem(where, "unknown key; allowed keys: " + ", ".join(params)))
                continue
            default = params[key]
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    out.append(Problem(where, f"got {value!r}; must be true or false"))
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                out.append(Problem(where, f"got {value!r}; must be a number"))
            elif value != value or value in (float("inf"), float("-inf")):
                out.append(Problem(where, f"got {value!r}; must be a finite number"))
            elif value < 0:
                out.append(Problem(where, f"got {value!r}; must be >= 0"))
            elif isinstance(default, int) and not float(value).is_integer():
                out.append(Problem(where, f"got {value!r}; must be an integer"))
            elif isinstance(default, int) and key in ("patience", "window", "min_history") \
                    and value < 1:
                out.append(Problem(where, f"got {value!r}; must be >= 1"))
    return out
