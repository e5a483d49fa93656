"""The ternary Forward-Forward training loop: `train_ternary`, called by `python -m moedesk.train`.

Reads top to bottom: set up, build, maybe resume, then per step route -> negatives ->
goodness -> Hebbian update, with telemetry every `train.log_every` steps, held-out
accuracy every `train.eval_every` steps, at every epoch end (which also drives early
stopping) and at the end, and checkpoints every `checkpoint.every` steps, every
`ternary.checkpoint_every_epochs` epochs, at the end and on a stop request. A checkpoint
holds everything the next step depends on, so a resumed run logs exactly what an
uninterrupted one would have (timings aside).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from moedesk.loadstats import SCALAR_KEYS, DeadExpertTracker, load_stats, metric_values
from moedesk.profiles import Profile, profile_to_dict
from moedesk.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from moedesk.train.emit import Emitter
from moedesk.train.loop import rss_mb
from moedesk.train.stopflag import StopFlag
from moedesk.train.ternary.data import EpochBatches, TernaryDataError, held_out_pairs, load_samples
from moedesk.train.ternary.model import StepStats, TernaryMoE

CHECKPOINT_FORMAT = "moedesk-ternary-1"


class LogWindow:
    """Sums over the steps since the last logged step (part of the checkpoint)."""

    def __init__(self, num_experts: int):
        self.num_experts = num_experts
        self.reset()

    def reset(self) -> None:
        self.steps = self.pairs = self.samples = self.weights_changed = 0
        self.goodness_pos = self.goodness_neg = 0.0
        self.route_seconds = self.train_seconds = 0.0
        self.counts_E = torch.zeros(self.num_experts, dtype=torch.int64)

    def add(self, stats: StepStats, samples: int, seconds: float) -> None:
        self.steps += 1
        self.samples += samples
        self.pairs += stats.pairs
        self.weights_changed += stats.weights_changed
        self.goodness_pos += stats.goodness_pos
        self.goodness_neg += stats.goodness_neg
        self.route_seconds += stats.route_seconds
        self.train_seconds += seconds
        self.counts_E += stats.counts_E

    def state_dict(self) -> dict:
        return {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                for k, v in vars(self).items()}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value.clone() if isinstance(value, torch.Tensor) else value)


def reference_imbalance(counts_E: torch.Tensor, routes: int) -> float:
    """The reference router's own score, sqrt(mean_i (u_i - 1/N)^2) with u_i = c_i / routes
    (sum u = K); for N = 243, K = 16 it can only lie in [0.062, 0.256]. Logged for
    comparison with the reference's logs; health rules read `moe/imbalance`."""
    u_E = counts_E.double() / max(routes, 1)
    return float(((u_E - 1.0 / len(counts_E)) ** 2).mean().sqrt())


def train_ternary(profile: Profile, run_dir: Path, emitter: Emitter, resume: Path | None = None,
                  stop_at: int | None = None, stop: StopFlag | None = None) -> str:
    """Train (or continue) a ternary run; returns the finish status (completed|stopped|failed)."""
    run_dir, tc, cfg = Path(run_dir), profile.train, profile.ternary
    stop = stop if stop is not None else StopFlag()
    step = 0

    def finish(status: str, reason: str) -> str:
        emitter.log(f"{status} at step {step}: {reason}")
        emitter.emit("finished", step=step, status=status, reason=reason)
        return status

    # 1. the process, the data (held-out negatives are the same for every seed), the model
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    try:
        train, held_out = load_samples(profile)
    except TernaryDataError as exc:
        return finish("failed", str(exc))
    batches = EpochBatches(train, tc.batch_size, profile.seed)
    eval_x, eval_neg = held_out_pairs(profile, held_out)
    model = TernaryMoE(profile)
    window = LogWindow(cfg.num_experts)
    dead = DeadExpertTracker(cfg.dead_window)
    best_accuracy, epochs_without_better = -1.0, 0

    # 2. resume: weights, specializations, counters, thresholds, generator, data position
    if resume is not None:
        try:
            state = load_checkpoint(Path(resume))
            if state.get("kind") != "ternary":
                raise CheckpointError(f"checkpoint {resume} is a {state.get('kind')!r} run, "
                                      "not 'ternary'")
            model.load_state_dict(state["model"])
            batches.load_state_dict(state["data"])
            window.load_state_dict(state["log_window"])
            dead.load_state_dict(state["dead_tracker"])
            best_accuracy = float(state["best_accuracy"])
            epochs_without_better = int(state["epochs_without_better"])
            step = int(state["step"])
        except (CheckpointError, KeyError, ValueError, RuntimeError) as exc:
            return finish("failed", f"cannot resume from {resume}: {exc}")

    last_step = tc.steps if stop_at is None else min(stop_at, tc.steps)
    emitter.emit("started", step=step, total_steps=tc.steps, pid=os.getpid(), device="cpu",
                 params={"total": model.total_params, "active": model.active_params},
                 resumed_from=step if resume is not None else None)
    emitter.log(f"ternary run {profile.name}: {cfg.num_experts} experts, top-{cfg.active_experts} "
                f"{cfg.topology}, {len(train)} training / {len(eval_x)} held-out samples, "
                f"{batches.batches_per_epoch} batches per epoch, steps {step + 1}..{last_step}")

    def save(at_step: int) -> None:
        state = {"format": CHECKPOINT_FORMAT, "kind": "ternary", "step": at_step,
                 "config": profile_to_dict(profile), "model": model.state_dict(),
                 "data": batches.state_dict(), "log_window": window.state_dict(),
                 "dead_tracker": dead.state_dict(), "best_accuracy": best_accuracy,
                 "epochs_without_better": epochs_without_better}
        info = save_checkpoint(state, run_dir, at_step)
        emitter.emit("checkpoint", step=at_step, path=str(info.path), size=info.size,
                     sha256=info.sha256)

    def evaluate(at_step: int) -> float:
        result = model.evaluate(eval_x, eval_neg, tc.batch_size)
        emitter.metrics(at_step, {"ff/accuracy": result.accuracy, "ff/tie_rate": result.tie_rate,
                                  "ff/eval_goodness_pos": result.goodness_pos,
                                  "ff/eval_goodness_neg": result.goodness_neg})
        emitter.log(f"Evaluation - step {at_step} | FF accuracy: {result.accuracy:.3f} "
                    f"(ties {result.tie_rate:.3f})")
        return result.accuracy

    # the untrained bank's accuracy is the baseline every later figure is read against
    if step == 0:
        evaluate(0)

    logs = 0
    while step < last_step:
        step += 1

        # 3. one batch: route, negatives, goodness, Hebbian update
        t0 = time.perf_counter()
        x_BL, ends_epoch = batches.next_batch()
        stats = model.train_step(x_BL)
        window.add(stats, len(x_BL), time.perf_counter() - t0)

        # 4. telemetry over the steps since the last log (a --stop-at step is not forced
        #    into a log: its partial window travels in the checkpoint instead, so a resumed
        #    run logs the same windows as an uninterrupted one)
        is_end, is_last = step == tc.steps, step == last_step
        if step % tc.log_every == 0 or is_end:
            counts = window.counts_E.tolist()
            row = {k: float(v) for k, v in load_stats(counts, cfg.active_experts).items()
                   if k in SCALAR_KEYS}
            row["dead_experts"] = float(dead.update(counts))
            values = metric_values({0: row}, "moe")
            pairs = max(window.pairs, 1)
            step_s = window.train_seconds / window.steps
            values.update({
                "ff/goodness_pos": window.goodness_pos / pairs,
                "ff/goodness_neg": window.goodness_neg / pairs,
                "ff/goodness_delta": (window.goodness_pos - window.goodness_neg) / pairs,
                "ff/weights_changed": window.weights_changed / (
                    window.steps * cfg.num_experts * model.bank.weights_per_expert),
                "route/latency_us": 1e6 * window.route_seconds / window.samples,
                "route/ref_imbalance": reference_imbalance(window.counts_E, window.samples),
                "train/epoch": batches.position.epoch
                + batches.position.batch / batches.batches_per_epoch,
                "train/samples_per_s": window.samples / max(window.train_seconds, 1e-9),
                "sys/step_s": step_s,
                "sys/rss_mb": rss_mb(),
            })
            emitter.metrics(step, values)
            emitter.expert_load(step, {0: counts})
            logs += 1
            if logs % 10 == 0 or is_end:
                emitter.log(f"Step {step}/{tc.steps} | goodness delta "
                            f"{values['ff/goodness_delta']:.3f} | imbalance "
                            f"{values['moe/imbalance']:.3f} | samples/s "
                            f"{values['train/samples_per_s']:.0f}")
            window.reset()

        # 5. held-out accuracy; an epoch end also decides early stopping (a stop request
        #    skips the evaluation to exit fast)
        do_eval = (tc.eval_every > 0 and step % tc.eval_every == 0) or is_end or ends_epoch
        early_stop = False
        if do_eval and not (stop.requested and not is_end):
            accuracy = evaluate(step)
            if ends_epoch:
                if accuracy > best_accuracy:
                    best_accuracy, epochs_without_better = accuracy, 0
                else:
                    epochs_without_better += 1
                patience = cfg.early_stopping_patience
                early_stop = patience > 0 and epochs_without_better >= patience

        # 6. checkpoint at its intervals, at the end, and on a stop request
        epoch_ckpt = (ends_epoch and cfg.checkpoint_every_epochs > 0
                      and batches.position.epoch % cfg.checkpoint_every_epochs == 0)
        every = profile.checkpoint.every
        if ((every > 0 and step % every == 0) or epoch_ckpt or is_last or early_stop
                or stop.requested):
            try:
                save(step)
            except CheckpointError as exc:
                return finish("failed", str(exc))
        if early_stop:
            return finish("completed", f"early stopping: no better held-out accuracy than "
                                       f"{best_accuracy:.4f} for {epochs_without_better} epochs")
        if stop.requested:
            return finish("stopped", stop.reason or "stop requested")

    if step < tc.steps:
        return finish("stopped", f"reached --stop-at {stop_at}")
    return finish("completed", f"trained {tc.steps} steps")
