"""The ternary Forward-Forward training loop: `train_ternary`, called by `python -m moedesk.train`.

Reads top to bottom: set up, build, maybe resume, then per step set the phase (the
curriculum's pool, the progressive-experts K), route -> negatives -> goodness -> Hebbian
update, with telemetry every `train.log_every` steps, held-out accuracy (overall and per
source) with a routing analysis every `train.eval_every` steps, at every epoch end (which
also drives early stopping) and at the end, and checkpoints every `checkpoint.every`
steps, every `ternary.checkpoint_every_epochs` epochs, at the end and on a stop request.
The run ends at `train.steps`, at `ternary.max_epochs` epochs or by early stopping. A
checkpoint holds everything the next step depends on, so a resumed run logs exactly what
an uninterrupted one would have (timings aside). With `[checkpoint] keep_best` each
evaluation offers its held-out accuracy (`ff/accuracy`) or seed 000's score
(`ff/seed000_score`, `seed000_score` below) to a `BestTracker`; a new best is
checkpointed at once and never pruned.

Shape letters: B samples, W trits per sample, E experts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from moedesk.profiles import Profile, profile_to_dict
from moedesk.stats import names
from moedesk.stats.load import SCALAR_KEYS, DeadExpertTracker, load_stats, metric_values
from moedesk.train.checkpoint import (
    BestTracker,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from moedesk.train.emit import Emitter
from moedesk.train.speed import resolve_threads
from moedesk.train.stopflag import StopFlag
from moedesk.train.system import rss_mb
from moedesk.train.ternary.analysis import routing_payload, typicality_buckets
from moedesk.train.ternary.baselines import Baselines
from moedesk.train.ternary.batches import Curriculum, EpochBatches
from moedesk.train.ternary.data import TernaryDataError, eval_set, load_data, run_symbols
from moedesk.train.ternary.model import StepStats, TernaryMoE

CHECKPOINT_FORMAT = "moedesk-ternary-1"


class LogWindow:
    """Sums over the steps since the last logged step (part of the checkpoint)."""

    def __init__(self, num_experts: int):
        self.num_experts = num_experts
        self.reset()

    def reset(self) -> None:
        self.steps = self.pairs = self.samples = self.weights_changed = self.pairs_updated = 0
        self.goodness_pos = self.goodness_neg = 0.0
        self.route_seconds = self.train_seconds = 0.0
        self.counts_E = torch.zeros(self.num_experts, dtype=torch.int64)

    def add(self, stats: StepStats, samples: int, seconds: float) -> None:
        self.steps += 1
        self.samples += samples
        self.pairs += stats.pairs
        self.weights_changed += stats.weights_changed
        self.pairs_updated += stats.pairs_updated
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


LATENCY_CALLS = 5  # single-sample routing calls timed per logged step (median)


def single_call_latency_us(model: TernaryMoE, x_BW: torch.Tensor) -> float:
    """Median wall time of routing one sample, the latency seed 000's 100 / 500 us
    thresholds are about (counters frozen: the timing changes nothing)."""
    times = []
    for _ in range(LATENCY_CALLS):
        t0 = time.perf_counter()
        model.router.route(x_BW[:1], update=False)
        times.append(time.perf_counter() - t0)
    return 1e6 * sorted(times)[LATENCY_CALLS // 2]


def active_experts_at(profile: Profile, step: int) -> int:
    """K for step `step` (1-based; 0 = before training): active_experts, then each
    active_experts_schedule entry from its active_experts_at step on."""
    t, k = profile.ternary, profile.ternary.active_experts
    for value, at in zip(t.active_experts_schedule, t.active_experts_at, strict=True):
        if step >= at:
            k = value
    return k
def seed000_score(goodness_delta: float, imbalance: float) -> float:
    """Seed 000's model-selection score, goodness delta x (1 - load-balance score), with the
    load-balance score read as `moe/imbalance` (0 balanced .. 1 collapsed,
    docs/loadstats.md); NaN when either is unknown."""
    return goodness_delta * (1.0 - imbalance)


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
    threads = resolve_threads(tc.threads)  # 0: the supervisor's share of the cores, if any
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        data = load_data(profile)
        evals = eval_set(profile, data)
        curriculum = Curriculum(profile, data)
    except TernaryDataError as exc:
        return finish("failed", str(exc))
    batches = EpochBatches(data.train_BW, tc.batch_size, profile.seed, data.train_source_B,
                           data.weights)
    model = TernaryMoE(profile)
    window = LogWindow(cfg.num_experts)
    dead = DeadExpertTracker(cfg.dead_window)
    best_accuracy, epochs_without_better = -1.0, 0
    # the non-learned scorers every accuracy is read against, fitted on the training data
    scorers = Baselines(data.train_BW, run_symbols(profile).trits_per_symbol)
    typicality_B = typicality_buckets(scorers.scores(evals.pos_BW)["frequency"])
    keep_best = profile.checkpoint.keep_best
    best = BestTracker(keep_best) if keep_best else None
    last_window: dict[str, float] = {}  # the latest logged window's values (seed000_score)

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
            if best is not None:
                best.load_state_dict(state.get("best"))
            last_window = dict(state.get("last_window") or {})
            step = int(state["step"])
        except (CheckpointError, KeyError, ValueError, RuntimeError) as exc:
            return finish("failed", f"cannot resume from {resume}: {exc}")
    # the phase the last finished step trained in (a fresh run: the first phase)
    phase = curriculum.phase_of(step)
    batches.set_pool(curriculum.pool(phase), new_epoch=False)
    model.set_active_experts(active_experts_at(profile, step))

    last_step = tc.steps if stop_at is None else min(stop_at, tc.steps)
    emitter.emit("started", step=step, total_steps=tc.steps, pid=os.getpid(), device="cpu",
                 params={"total": model.total_params, "active": model.active_params},
                 resumed_from=step if resume is not None else None)
    sources = ", ".join(f"{n} (weight {w:g})" for n, w in zip(data.names, data.weights,
                                                                  strict=True))
    emitter.log(f"ternary run {profile.name}: {cfg.num_experts} experts, top-"
                f"{model.active_experts} {cfg.topology}, negatives {cfg.negatives}, "
                f"{len(data.train_BW)} training / {len(evals.pos_BW)} held-out samples from "
                f"{sources}, {batches.batches_per_epoch} batches per epoch, steps "
                f"{step + 1}..{last_step}")

    def save(at_step: int) -> None:
        state = {"format": CHECKPOINT_FORMAT, "kind": "ternary", "step": at_step,
                 "config": profile_to_dict(profile), "model": model.state_dict(),
                 "data": batches.state_dict(), "log_window": window.state_dict(),
                 "dead_tracker": dead.state_dict(), "best_accuracy": best_accuracy,
                 "epochs_without_better": epochs_without_better,
                 "best": best.state_dict() if best is not None else None,
                 "last_window": last_window}
        info = save_checkpoint(state, run_dir, at_step, best=best)
        extra = {} if best is None else {"best_step": best.step, "metric": best.metric,
                                         "score": best.score_at(at_step)}
        emitter.emit("checkpoint", step=at_step, path=str(info.path), size=info.size,
                     sha256=info.sha256, **extra)

    def evaluate(at_step: int) -> tuple[float, bool]:
        """(held-out accuracy, whether keep_best found a new best at this step)."""
        result = model.evaluate(evals.pos_BW, evals.neg_BW, tc.batch_size)
        values = {names.FF_ACCURACY: result.accuracy, names.FF_TIE_RATE: result.tie_rate,
                  names.FF_EVAL_GOODNESS_POS: result.goodness_pos,
                  names.FF_EVAL_GOODNESS_NEG: result.goodness_neg,
                  names.FF_TEST_GOODNESS: float(result.total_pos_B.double().mean())}
        if len(data.names) > 1:
            for index, name in enumerate(data.names):
                wins = result.win_B[evals.source_B == index]
                values[names.ff_source_accuracy(name)] = float(wins.mean())
        if at_step == 0:
            base = scorers.accuracies(evals.pos_BW, evals.neg_BW)
            values.update({names.ff_baseline(name): base[name]
                           for name in names.FF_BASELINE_SCORERS})
        if names.FF_GOODNESS_DELTA in last_window:
            values[names.FF_SEED000_SCORE] = seed000_score(
                last_window[names.FF_GOODNESS_DELTA], last_window[names.MOE_IMBALANCE])
        emitter.metrics(at_step, values)
        emitter.emit("analysis", step=at_step, name="routing/L0", payload=routing_payload(
            experts_BK=result.experts_BK, clusters_BA=result.clusters_BA,
            goodness_pos_BK=result.goodness_pos_BK, goodness_neg_BK=result.goodness_neg_BK,
            source_B=evals.source_B, source_names=data.names, classes_BJ=evals.classes_BJ,
            class_names=data.class_names, typicality_B=typicality_B,
            num_experts=cfg.num_experts, num_clusters=model.router.num_clusters))
        emitter.log(f"Evaluation - step {at_step} | FF accuracy: {result.accuracy:.3f} "
                    f"(ties {result.tie_rate:.3f})")
        # step 0 is the untrained baseline, never checkpointed, so never the best
        new_best = best is not None and at_step > 0 and best.metric in values and \
            best.offer(at_step, values[best.metric])
        return result.accuracy, new_best

    # the untrained bank's accuracy is the baseline every later figure is read against
    if step == 0:
        evaluate(0)

    logs = 0
    while step < last_step:
        step += 1

        # 3. this step's phase: the curriculum's pool, the progressive-experts K
        if curriculum.phase_of(step) != phase:
            phase = curriculum.phase_of(step)
            batches.set_pool(curriculum.pool(phase), new_epoch=True)
            emitter.log(f"curriculum phase {phase + 1}/{curriculum.phases} from step {step}: "
                        f"{batches.batches_per_epoch} batches per epoch")
        active = active_experts_at(profile, step)
        if active != model.active_experts:
            model.set_active_experts(active)
            emitter.log(f"active experts {active} from step {step} (load counters carried "
                        "over)")

        # 4. one batch: route, negatives, goodness, Hebbian update
        t0 = time.perf_counter()
        x_BW, ends_epoch = batches.next_batch()
        stats = model.train_step(x_BW)
        window.add(stats, len(x_BW), time.perf_counter() - t0)
        epochs_done = (cfg.max_epochs > 0 and ends_epoch
                       and batches.position.epoch >= cfg.max_epochs)

        # 5. telemetry over the steps since the last log (a --stop-at step is not forced
        #    into a log: its partial window travels in the checkpoint instead, so a resumed
        #    run logs the same windows as an uninterrupted one)
        is_end = step == tc.steps or epochs_done
        is_last = step == last_step or epochs_done
        if step % tc.log_every == 0 or is_end:
            counts = window.counts_E.tolist()
            row = {k: float(v) for k, v in load_stats(counts, model.active_experts).items()
                   if k in SCALAR_KEYS}
            row["dead_experts"] = float(dead.update(counts))
            values = metric_values({0: row}, names.MOE)
            pairs = max(window.pairs, 1)
            step_s = window.train_seconds / window.steps
            values.update({
                names.FF_GOODNESS_POS: window.goodness_pos / pairs,
                names.FF_GOODNESS_NEG: window.goodness_neg / pairs,
                names.FF_GOODNESS_DELTA: (window.goodness_pos - window.goodness_neg) / pairs,
                names.FF_WEIGHTS_CHANGED: window.weights_changed / (
                    window.steps * cfg.num_experts * model.bank.weights_per_expert),
                names.FF_PAIRS_UPDATED: window.pairs_updated / pairs,
                names.ROUTE_LATENCY_US: single_call_latency_us(model, x_BW),
                names.ROUTE_US_PER_SAMPLE: 1e6 * window.route_seconds / window.samples,
                names.ROUTE_REF_IMBALANCE: reference_imbalance(window.counts_E, window.samples),
                names.ROUTE_ACTIVE_EXPERTS: float(model.active_experts),
                names.TRAIN_EPOCH: batches.position.epoch
                + batches.position.batch / max(batches.batches_per_epoch, 1),
                names.TRAIN_SAMPLES_PER_S: window.samples / max(window.train_seconds, 1e-9),
                names.SYS_STEP_S: step_s,
                names.SYS_RSS_MB: rss_mb(),
            })
            if curriculum.phases > 1:
                values[names.TRAIN_CURRICULUM_PHASE] = float(phase + 1)
            emitter.metrics(step, values)
            emitter.expert_load(step, {0: counts})
            last_window = {k: values[k] for k in (names.FF_GOODNESS_DELTA, names.MOE_IMBALANCE)}
            logs += 1
            if logs % 10 == 0 or is_end:
                emitter.log(f"Step {step}/{tc.steps} | goodness delta "
                            f"{values[names.FF_GOODNESS_DELTA]:.3f} | imbalance "
                            f"{values[names.MOE_IMBALANCE]:.3f} | samples/s "
                            f"{values[names.TRAIN_SAMPLES_PER_S]:.0f}")
            window.reset()

        # 6. held-out accuracy; an epoch end also decides early stopping (a stop request
        #    skips the evaluation to exit fast)
        do_eval = (tc.eval_every > 0 and step % tc.eval_every == 0) or is_end or ends_epoch
        early_stop = new_best = False
        if do_eval and not (stop.requested and not is_end):
            accuracy, new_best = evaluate(step)
            if ends_epoch:
                if accuracy > best_accuracy:
                    best_accuracy, epochs_without_better = accuracy, 0
                else:
                    epochs_without_better += 1
                patience = cfg.early_stopping_patience
                early_stop = patience > 0 and epochs_without_better >= patience

        # 7. checkpoint at its intervals, at the end, and on a stop request
        epoch_ckpt = (ends_epoch and cfg.checkpoint_every_epochs > 0
                      and batches.position.epoch % cfg.checkpoint_every_epochs == 0)
        every = profile.checkpoint.every
        if ((every > 0 and step % every == 0) or epoch_ckpt or is_last or early_stop
                or new_best or stop.requested):
            try:
                save(step)
            except CheckpointError as exc:
                return finish("failed", str(exc))
        if early_stop:
            return finish("completed", f"early stopping: no better held-out accuracy than "
                                       f"{best_accuracy:.4f} for {epochs_without_better} epochs")
        if epochs_done:
            return finish("completed", f"reached ternary.max_epochs = {cfg.max_epochs} epochs")
        if stop.requested:
            return finish("stopped", stop.reason or "stop requested")

    if step < tc.steps:
        return finish("stopped", f"reached --stop-at {stop_at}")
    return finish("completed", f"trained {tc.steps} steps")
