"""`MoETelemetry`: what the top-k MoE layers did since the last logged step, as metrics.

Beside the model, not inside it (modelled on ternary/loop.py's `LogWindow`): the window
watches each `MoEFFN` through forward hooks and owns everything that telemetry gathers
between logged steps, and its checkpoint state:
  - per training forward (`module.training` with grad enabled; evaluation is never
    counted): the weighted aux and z losses, routed and dropped slots (hook on the layer)
  - router timing: the first training forward of each window, per layer, with a CUDA
    sync on either side (hooks on the layer's `router`)
  - per optimizer step, `after_step`, which the loop calls before `update_bias` zeroes
    each layer's `tokens_per_expert_E`: the counts, added up on the device
  - per logged step, `read`: the `moe/...`, `moe/L{i}/...` and `route/...` metrics
    (stats/names.py) from `stats.load`, dead experts over `moe.dead_window` logged steps,
    and the counts for the `expert_load` event; then the window starts over.
Everything `read` needs from the device is one float64 vector, `device_values`, which the
loop brings to the host together with its own numbers: one host sync per logged step.
A model without MoE layers (the dense kind) has an empty window and reports nothing.
Build it after the model is on its device.

Shape letters (model.py's legend): L MoE layers, E experts.
"""

from __future__ import annotations

import time
from functools import partial

import torch
from torch import Tensor, nn

from moedesk.stats import names
from moedesk.stats.load import DeadExpertTracker, metric_values, scalar_stats
from moedesk.train.moe import MoEFFN


class MoETelemetry:
    """The log window of a model's MoE layers (empty for a dense model)."""

    def __init__(self, model: nn.Module):
        self.ffns = [m for m in model.modules() if isinstance(m, MoEFFN)]
        self.num_experts = self.ffns[0].num_experts if self.ffns else 0
        self.device = next(model.parameters()).device
        self.trackers = {f.layer_idx: DeadExpertTracker(f.cfg.dead_window) for f in self.ffns}
        self._hooks = []
        for row, ffn in enumerate(self.ffns):
            self._hooks += [ffn.register_forward_hook(partial(self._after_forward, row)),
                            ffn.router.register_forward_pre_hook(partial(self._time_start, row)),
                            ffn.router.register_forward_hook(partial(self._time_stop, row))]
        self.reset()

    def reset(self) -> None:
        """Start a new window (the dead-expert streaks carry over)."""
        n_layers = len(self.ffns)
        self.counts_LE = torch.zeros(n_layers, self.num_experts, dtype=torch.float64,
                                     device=self.device)
        self.aux = [torch.zeros((), device=self.device) for _ in range(n_layers)]
        self.z = [torch.zeros((), device=self.device) for _ in range(n_layers)]
        self.forwards = [0] * n_layers
        self.routed_slots = [0] * n_layers
        self.dropped_slots = [0] * n_layers
        self.router_seconds = [0.0] * n_layers
        self.router_tokens = [0] * n_layers
        self._timing = [True] * n_layers  # each layer times its first training forward
        self._started: list[float | None] = [None] * n_layers

    def remove(self) -> None:
        """Detach from the model (in-process callers that train it again)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # ---- hooks -------------------------------------------------------------------------------
    # Host-side bookkeeping and clocks: under [train] compile Dynamo would trace each hook
    # once per layer (`row` is a constant to it) and hit its recompile limit; they run
    # eagerly instead (a graph break each, beside the MoE dispatch that is eager anyway).
    @torch.compiler.disable
    def _after_forward(self, row: int, ffn: MoEFFN, args: tuple, _output: Tensor) -> None:
        if not (ffn.training and torch.is_grad_enabled()):
            return
        self.aux[row] = self.aux[row] + ffn.aux_loss.detach()
        self.z[row] = self.z[row] + ffn.z_loss.detach()
        self.forwards[row] += 1
        x_BTD = args[0]
        self.routed_slots[row] += x_BTD.numel() // x_BTD.shape[-1] * ffn.top_k
        self.dropped_slots[row] += ffn.dropped_slots

    @torch.compiler.disable
    def _time_start(self, row: int, router: nn.Module, args: tuple) -> None:
        if self._timing[row] and router.training and torch.is_grad_enabled():
            if args[0].is_cuda:
                torch.cuda.synchronize()
            self._started[row] = time.perf_counter()

    @torch.compiler.disable
    def _time_stop(self, row: int, _router: nn.Module, args: tuple, _output: tuple) -> None:
        start = self._started[row]
        if start is None:
            return
        if args[0].is_cuda:
            torch.cuda.synchronize()
        self.router_seconds[row] += time.perf_counter() - start
        self.router_tokens[row] += args[0].shape[0]
        self._started[row], self._timing[row] = None, False

    # ---- the loop's calls ----------------------------------------------------------------
    @torch.no_grad()
    def after_step(self) -> None:
        """Once per optimizer step, before `update_bias` zeroes the layers' counts."""
        if self.ffns:
            self.counts_LE += torch.stack([f.tokens_per_expert_E for f in self.ffns])

    @torch.no_grad()
    def device_values(self) -> Tensor:
        """What `read` needs from the device, flat float64: counts_LE, then per layer the
        summed aux and z losses and max |b|."""
        if not self.ffns:
            return torch.zeros(0, dtype=torch.float64, device=self.device)
        bias_L = torch.stack([f.expert_bias_E.abs().max() for f in self.ffns])
        return torch.cat([self.counts_LE.flatten(), torch.stack(self.aux).double(),
                          torch.stack(self.z).double(), bias_L.double()])

    def read(self, host: list[float] | None = None
             ) -> tuple[dict[str, float], dict[int, list[int]]]:
        """(metrics, {layer: counts}) of the window, which then starts over; `host` is
        `device_values()` already on the host (read here when None)."""
        if not self.ffns:
            return {}, {}
        if host is None:
            host = self.device_values().tolist()
        n_layers, n_experts = len(self.ffns), self.num_experts
        sums = host[n_layers * n_experts:]
        per_layer: dict[int, dict[str, float]] = {}
        loads: dict[int, list[int]] = {}
        latency: dict[int, float] = {}
        for row, ffn in enumerate(self.ffns):
            i = ffn.layer_idx
            counts = host[row * n_experts:(row + 1) * n_experts]
            loads[i] = [int(c) for c in counts]
            stats = scalar_stats(counts, ffn.top_k)
            stats["dead_experts"] = float(self.trackers[i].update(counts))
            forwards = max(self.forwards[row], 1)
            stats["aux_loss"] = sums[row] / forwards
            stats["z_loss"] = sums[n_layers + row] / forwards
            stats["max_abs_bias"] = sums[2 * n_layers + row]
            stats["dropped_frac"] = self.dropped_slots[row] / max(self.routed_slots[row], 1)
            per_layer[i] = stats
            if self.router_tokens[row]:
                latency[i] = 1e6 * self.router_seconds[row] / self.router_tokens[row]
        values = metric_values(per_layer, names.MOE)
        if latency:
            values[names.ROUTE_LATENCY_US] = sum(latency.values()) / len(latency)
            values.update({names.per_layer(names.ROUTE_LATENCY_US, i): v
                           for i, v in latency.items()})
        self.reset()
        return values, loads

    # ---- checkpoint state ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """The window so far and the dead-expert streaks, so a resumed run reports what an
        uninterrupted one would (timings aside: the resumed window times its router anew).
        The layout is the one `MoELM.extra_state` wrote before this module existed."""
        counts = self.counts_LE.tolist()
        return {
            "dead_trackers": {i: t.state_dict() for i, t in self.trackers.items()},
            "log": {ffn.layer_idx: {"counts": counts[row], "forwards": self.forwards[row],
                                    "aux": float(self.aux[row]), "z": float(self.z[row]),
                                    "routed": self.routed_slots[row],
                                    "dropped": self.dropped_slots[row]}
                    for row, ffn in enumerate(self.ffns)},
        }

    def load_state_dict(self, state: dict) -> None:
        for i, tracker_state in state.get("dead_trackers", {}).items():
            self.trackers[int(i)].load_state_dict(tracker_state)
        logs = {int(i): v for i, v in state.get("log", {}).items()}
        for row, ffn in enumerate(self.ffns):
            log = logs.get(ffn.layer_idx)
            if log is None:
                continue
            self.counts_LE[row] = torch.tensor(log["counts"], dtype=torch.float64)
            self.forwards[row] = int(log["forwards"])
            # float32, as summed: the saved float is exactly the float32 sum
            self.aux[row] = torch.tensor(log["aux"], device=self.device)
            self.z[row] = torch.tensor(log["z"], device=self.device)
            self.routed_slots[row] = int(log["routed"])
            self.dropped_slots[row] = int(log["dropped"])
