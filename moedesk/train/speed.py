"""The trainer's speed settings: CPU threads, `torch.compile`, activation checkpointing.

Kept out of loop.py so the loop reads top to bottom (it calls three things here):
  - `resolve_threads(train.threads)`: an explicit count wins; 0 takes the supervisor's
    share of the cores (`THREADS_ENV`, runner/threads.py), else torch's default.
  - `prepare_model(model, train)`: `[train] activation_checkpointing` makes each block
    recompute its activations in backward (the MoE FFN recomputes its experts only, so
    routing counts and telemetry hooks see one forward); `[train] compile` compiles every
    block in place (`nn.Module.compile`, so parameter names and checkpoints are
    unchanged). The MoE dispatch and experts (`MoEFFN._experts_sorted`) run eagerly
    (`torch.compiler.disable`): their per-expert row counts are host integers that change
    every step, and traced they would recompile every step; they are matmuls, which
    compiling does not speed up. Attention, norms, RoPE, the router and the losses compile
    with fixed shapes.
  - `CompileClock`: the first compiled step's time (tracing + codegen) is reported on its
    own and kept out of `sys/step_s`.
  - `bf16_alert(train, device)`: the warning alert (and run-log line) a run opens with
    when `[train] bf16` asks for bf16 on a CPU without bf16 instructions (or a GPU
    before compute capability 8.0), where the step runs several times slower than fp32
    (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from moedesk.profiles.schema import TrainSection
from moedesk.runner.protocol import THREADS_ENV


def resolve_threads(configured: int) -> int:
    """The thread count to set (0 = leave torch's default)."""
    if configured > 0:
        return configured
    try:
        return max(0, int(os.environ.get(THREADS_ENV, "0")))
    except ValueError:
        return 0


def prepare_model(model: nn.Module, tc: TrainSection) -> None:
    if tc.activation_checkpointing:
        model.set_activation_checkpointing(True)
    if tc.compile:
        for block in model.blocks:
            block.compile(dynamic=False)


class CompileClock:
    """Times the first optimizer step of a compiled model, which includes compiling."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled, self.device = enabled, device
        self.started = time.perf_counter()

    def first_step_done(self) -> float | None:
        """Seconds the first step took (compile included), once; None when not compiling."""
        if not self.enabled:
            return None
        self.enabled = False
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - self.started


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (avx512_bf16 or AMX). Without either,
    oneDNN emulates bf16: 4.4 GFLOP/s against 37 in fp32 for the FFN's matmul on an
    AVX2-only AMD EPYC (one core), the whole step ~13x slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def device_has_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 matmuls natively: the CPU's instructions, or a CUDA GPU
    of compute capability 8.0 or later (earlier ones emulate bf16)."""
    if device.type == "cpu":
        return cpu_has_bf16()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return True  # nothing known to say otherwise


BF16_EMULATED_RULE = "bf16_emulated"


def bf16_alert(tc: TrainSection, device: torch.device, has_bf16: bool | None = None
               ) -> dict | None:
    """The fields of the trainer's `alert` event for `[train] bf16 = true` on a device
    that emulates bf16 (runner/protocol.py), else None. `has_bf16`: what
    `device_has_bf16(device)` says."""
    if not tc.bf16 or device.type not in ("cpu", "cuda"):
        return None
    if device_has_bf16(device) if has_bf16 is None else has_bf16:
        return None
    if device.type == "cpu":
        what = ("the CPU has no bf16 instructions (no avx512_bf16, no AMX; torch sees "
                f"{torch.backends.cpu.get_cpu_capability()})")
        cost = "several times slower than in fp32 (~13x on an AVX2-only CPU)"
    else:
        what = "this GPU has no native bf16 (compute capability below 8.0)"
        cost = "slower than in fp32 or fp16"
    return {"rule": BF16_EMULATED_RULE, "level": "warning",
            "title": f"bf16 is emulated on this {'CPU' if device.type == 'cpu' else 'GPU'}",
            "text": f"[train] bf16 = true, but {what}, so every bf16 matmul is emulated "
                    f"and steps run {cost}",
            "action": ("set [train] bf16 = false in the profile (or measure both: "
                       "bench/train_step.py --precision both)")}
