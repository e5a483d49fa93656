"""The trainer's process-level helpers (train/system.py): glibc's allocator settings."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys

import pytest

from moedesk.paths import config_file
from moedesk.profiles import profile_to_dict, validate_data
from moedesk.train import __main__ as entry
from moedesk.train import system

# one fresh process per setting: mallopt changes the process for good. The churn frees
# about 80 MB of 0.5-3.5 MB tensors per round, as a step frees its activations
CHURN = r"""
import resource, sys, torch
if sys.argv[1] == "kept":
    from moedesk.train.system import keep_freed_memory
    assert keep_freed_memory()
def churn():
    tensors = [torch.ones((1 + i % 7) * 131072) for i in range(40)]
    del tensors
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    churn()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""

has_mallopt = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallopt")


def faults_per_round(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True,
                         check=True, timeout=120)
    return float(out.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not has_mallopt, reason="glibc's mallopt is Linux-only")
def test_freed_memory_is_kept_for_the_next_step():
    default, kept = faults_per_round("default"), faults_per_round("kept")
    # each round touches ~20k pages: glibc's defaults hand thousands back to the kernel
    # and fault them in again; the trainer's settings keep them
    assert default > 1000
    assert kept < default / 4


def test_the_trainer_entry_point_applies_the_settings_before_training(monkeypatch, tmp_path):
    events = []
    monkeypatch.setattr(system, "keep_freed_memory", lambda: events.append("malloc") or True)
    monkeypatch.setattr(entry, "_run", lambda *a: events.append("train") or 0)
    config = profile_to_dict(validate_data({"name": "t", "kind": "ternary", "seed": 0}))
    config_file(tmp_path).write_text(json.dumps(config))
    assert entry._main([str(tmp_path)]) == 0  # main() would leave SIGTERM ignored here
    assert events == ["malloc", "train"]
