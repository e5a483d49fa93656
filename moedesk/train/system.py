"""The trainer's process-level helpers: seeding, RNG state for checkpoints, resident
memory, and glibc's allocator settings.

Shared by both loops (`loop.py` for the LM kinds, `ternary/loop.py`), so neither loop
imports the other. A checkpoint carries `rng_states`; `restore_rng_states` puts every
generator back, which is half of what makes a resumed run continue exactly.
`keep_freed_memory` is called once per trainer process (`python -m moedesk.train`) and by
the step benchmarks, so they measure what the trainer runs.
"""

from __future__ import annotations

import ctypes
import os
import random
import resource

import numpy as np
import torch

# glibc's mallopt parameters (malloc.h) and the values the trainer sets
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_SETTINGS = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 256 << 20),
                   (M_TOP_PAD, 16 << 20))


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for the next step instead of returning it to the kernel.

    By default glibc trims the heap's top and unmaps large blocks as soon as they are
    free, so every step faults its buffers in again: a bf16 top2 MoE layer at 2048x256
    took 3,600-6,700 minor faults a step (each about a microsecond on these VMs), because
    the experts' group sizes change every step and the freed blocks never fit exactly.
    With blocks up to 32 MB taken from the heap and up to 256 MB of free heap kept, that
    layer takes 50-300 faults a step and runs 20% faster, and the fp32 top2 step 5-9%
    (the bf16 step within noise; docs/benchmarks.md). Resident memory then stays near the
    step's peak, which it reaches every step anyway (the peak itself up to 12% higher).
    Returns whether the settings took (glibc only)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no mallopt (macOS, Windows); musl's says 0
        return False
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS)


# the step benchmarks' `--allocator`: what the trainer runs, or glibc's own defaults
ALLOCATORS = ("trainer", "glibc")
ALLOCATOR_HELP = ("trainer: glibc keeps freed memory, as every trainer process sets it "
                  "(train/system.py); glibc: its defaults")


def use_allocator(choice: str) -> bool:
    """Apply a benchmark's `--allocator` choice (one of `ALLOCATORS`) to this process."""
    return keep_freed_memory() if choice == "trainer" else False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states(device: torch.device) -> dict:
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": np.random.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def rss_mb() -> float:
    """Resident memory of this process now (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
