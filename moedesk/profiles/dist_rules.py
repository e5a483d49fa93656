"""Cross-field rules of several processes or nodes (docs/distributed.md): the world size,
the rendezvous endpoint, expert parallelism's divisibility, the ternary kind's one process.
`rules.cross_field_problems` calls `dist_problems`; the launcher reads `world_size`.
"""

from __future__ import annotations

from moedesk.profiles.errors import Problem
from moedesk.profiles.schema import Profile


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


def dist_problems(p: Profile) -> list[Problem]:
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


__all__ = ["world_size", "parse_endpoint", "dist_problems"]
