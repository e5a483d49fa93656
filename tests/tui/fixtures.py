"""A canned data home for TUI tests: five runs of every kind and state, at fixed times.

Rows are written with the store's own writer API (create_run, write_batch, finish_run)
so they look exactly like what a supervisor writes; only the timestamps are then pinned
(FIXED_NOW) so ages and wall times in snapshots never depend on the clock.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from moedesk.paths import db_path
from moedesk.profiles import profile_to_dict, validate_data
from moedesk.store import connect_writer
from moedesk.store import runs as store_runs
from moedesk.store.db import transaction
from moedesk.store.ingest import Batch, write_batch
from moedesk.train.grammar import LABEL_NAMES

FIXED_NOW = 1_750_000_000.0
TOPK_LAYERS, TOPK_EXPERTS, TERNARY_EXPERTS = 2, 8, 243
TOPK_TOP_K = 2
ANALYSIS_STEPS = (25, 50)  # topk-b's evaluations with a routing analysis


@dataclass
class Home:
    path: Path
    dense: int  # completed
    topk: int  # running (its "supervisor" is the test process, so it is alive)
    ternary: int  # stopped, with checkpoints
    crashed: int  # status running, supervisor pid dead
    failed: int  # topk, failed with an error


def config(kind: str, name: str, steps: int) -> dict:
    data = {"name": name, "kind": kind, "seed": 0, "train": {"steps": steps, "warmup_steps": 5}}
    if kind == "ternary":
        data["ternary"] = {"topology": "hierarchical"}
    return profile_to_dict(validate_data(data, f"{name}.toml"))


def _pin_times(conn, run_id: int, created: float, started: float | None,
               ended: float | None) -> None:
    with transaction(conn):
        conn.execute("UPDATE runs SET created_at = ?, started_at = ?, ended_at = ? WHERE id = ?",
                     (created, started, ended, run_id))


def _lm_metrics(batch: Batch, steps: int, wall: float, moe: bool) -> None:
    for step in range(1, steps + 1):
        loss = 2.2 + 3.3 * math.exp(-step / 25) + 0.05 * math.sin(step)
        values = {"train/loss": loss, "train/lr": 3e-3 * min(1.0, step / 5),
                  "train/tokens_per_s": 8000.0 + step, "sys/step_s": 0.06}
        if moe:
            values.update({"moe/imbalance": 0.04 + 0.002 * (step % 7), "moe/usage_std": 0.011,
                           "moe/dead_experts": 0.0, "route/latency_us": 42.0})
        batch.add_metrics(step, values, wall + step)
        if step % 25 == 0:
            val = loss + 0.1
            batch.add_metrics(step, {"val/loss": val, "val/ppl": math.exp(val)}, wall + step)


def _topk_load(batch: Batch, steps: int, wall: float) -> None:
    for step in range(1, steps + 1):
        loads = {}
        for layer in range(TOPK_LAYERS):
            # expert 0 is over-used, expert 7 starves in layer 1: visible in the heatmap
            counts = [256 + 40 * ((e + step + layer) % 3) for e in range(TOPK_EXPERTS)]
            counts[0] = 700
            if layer == 1:
                counts[7] = 0
            loads[str(layer)] = counts
        batch.add_expert_load(step, loads, wall + step)


def _ternary_load(batch: Batch, steps: int, wall: float) -> None:
    for step in range(1, steps + 1):
        counts = [(e * 7 + step) % 23 for e in range(TERNARY_EXPERTS)]
        counts[5] = 0
        batch.add_expert_load(step, {"0": counts}, wall + step)
        batch.add_metrics(step, {"ff/goodness_delta": 0.3 + step / 100,
                                 "train/samples_per_s": 1500.0, "moe/imbalance": 0.31,
                                 "route/latency_us": 130.0, "ff/accuracy": 0.5 + step / 200,
                                 "moe/dead_experts": 1.0}, wall + step)


def _split(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights`; the remainder goes to the heaviest."""
    parts = [total * w // sum(weights) for w in weights]
    parts[weights.index(max(weights))] += total - sum(parts)
    return parts


def routing_payload(layer: int, step: int) -> dict:
    """A `routing/L{layer}` payload as the trainer writes it: class c leans on expert c % E
    (harder at later steps); layer 1's expert 7 gets nothing; "conjunction" has no tokens."""
    class_tokens = [0 if name == "conjunction" else 40 + 13 * c
                    for c, name in enumerate(LABEL_NAMES)]
    by_class = [[0] * len(LABEL_NAMES) for _ in range(TOPK_EXPERTS)]
    for c, n in enumerate(class_tokens):
        weights = [1 + (e + c + layer) % 3 + (step // 5) * (e == c % TOPK_EXPERTS)
                   for e in range(TOPK_EXPERTS)]
        if layer == 1:
            weights[7] = 0
        for e, count in enumerate(_split(n * TOPK_TOP_K, weights)):
            by_class[e][c] = count
    histogram = [sum(row) for row in by_class]
    tokens = sum(class_tokens)
    first_choice = _split(tokens, histogram)
    bucket_tokens = _split(tokens, [1, 1, 1, 1])
    return {"layer": layer, "split": "val", "windows": 8, "tokens": tokens,
            "num_experts": TOPK_EXPERTS, "top_k": TOPK_TOP_K, "histogram": histogram,
            "first_choice": first_choice, "classes": list(LABEL_NAMES),
            "class_tokens": class_tokens, "by_class": by_class,
            "frequency_buckets": ["q1_most_frequent", "q2", "q3", "q4_least_frequent"],
            "bucket_tokens": bucket_tokens,
            "by_frequency": [_split(h, [4, 3, 2, 1]) for h in histogram]}


def alert(step: int, rule: str, severity: str, message: str, action: str) -> dict:
    return {"step": step, "rule": rule, "severity": severity, "metric": "m", "value": 1.0,
            "threshold": 0.5, "message": message, "action": action, "wall": FIXED_NOW}


def _write_log(run_dir: Path, lines: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "train.log").write_text("".join(line + "\n" for line in lines))


def build_home(path: Path) -> Home:
    """Write the five runs into `path/moedesk.db` (created); returns their ids."""
    db = connect_writer(db_path(path))
    conn = db.conn
    ids = {}
    for key, kind, name, steps in (("dense", "dense", "dense-a", 100),
                                   ("topk", "topk", "topk-b", 200),
                                   ("ternary", "ternary", "tern-c", 300),
                                   ("crashed", "dense", "dense-d", 100),
                                   ("failed", "topk", "topk-e", 100)):
        ids[key] = store_runs.create_run(conn, config=config(kind, name, steps),
                                         profile_path=f"profiles/{name}.toml", home=path,
                                         name=name).run_id
    me = psutil.Process()

    # dense-a: completed after 100 steps
    run = ids["dense"]
    store_runs.set_supervisor(conn, run, 999_999, FIXED_NOW)
    store_runs.mark_running(conn, run, 999_998)
    store_runs.record_started_event(conn, run, {"total_steps": 100, "device": "cpu",
                                                "params": {"total": 115008, "active": 115008}})
    batch = Batch()
    _lm_metrics(batch, 100, FIXED_NOW - 7200, moe=False)
    write_batch(conn, run, batch)
    store_runs.finish_run(conn, run, "completed", 0, None)
    _pin_times(conn, run, FIXED_NOW - 7300, FIXED_NOW - 7200, FIXED_NOW - 7080)
    _write_log(path / str(run), [f"12:00:{s:02d} Step {s * 10}/100 | LM Loss: 2.5" for s in
                                 range(1, 11)] + ["12:00:11 completed at step 100"])

    # topk-b: running, 60 of 200 steps, with an open warning
    run = ids["topk"]
    store_runs.set_supervisor(conn, run, me.pid, me.create_time())
    store_runs.mark_running(conn, run, me.pid)
    store_runs.record_started_event(conn, run, {"total_steps": 200, "device": "cpu",
                                                "params": {"total": 310000, "active": 160000}})
    batch = Batch()
    _lm_metrics(batch, 60, FIXED_NOW - 120, moe=True)
    _topk_load(batch, 60, FIXED_NOW - 120)
    for step in ANALYSIS_STEPS:
        for layer in range(TOPK_LAYERS):
            batch.analysis.append((step, f"routing/L{layer}",
                                   json.dumps(routing_payload(layer, step)), FIXED_NOW - 120 + step))
    batch.alerts.append(alert(40, "usage_std", "warning", "expert_usage_std 0.041 > 0.03",
                              "Increase moe.aux_loss_weight or enable bias balancing."))
    write_batch(conn, run, batch)
    _pin_times(conn, run, FIXED_NOW - 130, FIXED_NOW - 120, None)
    _write_log(path / str(run), ["12:10:00 topk run topk-b: 310,000 parameters on cpu",
                                 "12:10:05 Step 50/200 | LM Loss: 2.71 | Tokens/sec: 8050"])

    # tern-c: stopped at 80 of 300, checkpoints at 40 and 80, a critical and a cleared alert
    run = ids["ternary"]
    store_runs.set_supervisor(conn, run, 999_997, FIXED_NOW)
    store_runs.mark_running(conn, run, 999_996)
    batch = Batch()
    _ternary_load(batch, 80, FIXED_NOW - 3000)
    for step in (40, 80):
        batch.checkpoints.append((step, str(path / str(run) / f"ckpt-{step}.pt"), 2_000_000,
                                  "0" * 64, FIXED_NOW - 3000 + step))
    batch.alerts.append(alert(30, "goodness_delta", "warning", "goodness delta 0.35 < 0.5",
                              "Increase the learning rate, check the data (seed 000)."))
    batch.alerts.append(alert(60, "routing_latency", "critical", "routing latency 130 us > 100",
                              "Enable hierarchical selection (ternary.topology)."))
    batch.cleared.append(("goodness_delta", 55))
    write_batch(conn, run, batch)
    store_runs.finish_run(conn, run, "stopped", 0, "stopped by request (exit code 0)")
    _pin_times(conn, run, FIXED_NOW - 3100, FIXED_NOW - 3000, FIXED_NOW - 2900)
    _write_log(path / str(run), ["12:20:00 ternary run tern-c: 243 experts",
                                 "12:21:40 stopped at step 80: stop requested"])

    # dense-d: says running, but its supervisor is gone -> crashed
    run = ids["crashed"]
    store_runs.set_supervisor(conn, run, 999_995, FIXED_NOW)
    store_runs.mark_running(conn, run, 999_994)
    batch = Batch()
    _lm_metrics(batch, 10, FIXED_NOW - 90000, moe=False)
    write_batch(conn, run, batch)
    _pin_times(conn, run, FIXED_NOW - 90000, FIXED_NOW - 89990, None)

    # topk-e: failed immediately
    run = ids["failed"]
    store_runs.finish_run(conn, run, "failed", 1, "cannot start: no such file data/x.bin")
    _pin_times(conn, run, FIXED_NOW - 600, None, FIXED_NOW - 598)
    db.close()
    assert os.path.exists(db_path(path))
    return Home(path, ids["dense"], ids["topk"], ids["ternary"], ids["crashed"], ids["failed"])


MARKUP_NAMES = ("[/]", "[red]x[/red]")  # run names Rich would read as markup


def add_markup_runs(path: Path) -> tuple[int, int]:
    """Two runs whose every text field looks like Rich markup: "[/]" (running, with an alert
    and a log), "[red]x[/red]" (failed, with an error). Returns their ids."""
    db = connect_writer(db_path(path))
    conn = db.conn
    ids = []
    for name, kind in zip(MARKUP_NAMES, ("topk", "dense"), strict=True):
        store_runs.create_run(conn, config=config(kind, "markup", 50),
                              profile_path="profiles/[b]odd.toml", home=path, name=name)
        ids.append(conn.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchone()[0])
    running, failed = ids
    me = psutil.Process()
    store_runs.set_supervisor(conn, running, me.pid, me.create_time())
    store_runs.mark_running(conn, running, me.pid)
    batch = Batch()
    _lm_metrics(batch, 10, FIXED_NOW - 60, moe=True)
    _topk_load(batch, 10, FIXED_NOW - 60)
    batch.alerts.append(alert(5, "usage_std", "warning", "[/] closes nothing [red]x[/red]",
                              "set [b]moe.top_k[/b] = [/]"))
    batch.checkpoints.append((10, str(path / str(running) / "ckpt-[1].pt"), 1000, "0" * 64,
                              FIXED_NOW))
    write_batch(conn, running, batch)
    _pin_times(conn, running, FIXED_NOW - 70, FIXED_NOW - 60, None)
    _write_log(path / str(running), ["12:00:00 [/] a log line [red]x[/red]",
                                     "12:00:01 Step 10/50 | [bold]LM Loss[/bold]: 2.5"])
    store_runs.finish_run(conn, failed, "failed", 1, "[/b] boom [red]x[/red]\nsecond line")
    _pin_times(conn, failed, FIXED_NOW - 50, None, FIXED_NOW - 49)
    db.close()
    return running, failed
