"""The training loop of the LM kinds (dense and top-k MoE): `train_lm`.

Reads top to bottom: set up, build, maybe resume, then per step forward/backward over
micro-batches, clip, step, and at their intervals log, evaluate and checkpoint. Every
result leaves through the `Emitter` (events on stdout, human lines on stderr): metrics
(with `data/batch_hash`, a checksum of the logged step's batches), expert loads and
routing `analysis` events for MoE models, checkpoints, and one `finished`.

Telemetry is kept off the hot path: loss and gradient norm stay on the device and are
read back (one sync, with the MoE telemetry window's numbers) only on log, eval and
checkpoint steps. A non-finite value seen in between is remembered on the device, so no
checkpoint ever holds a non-finite state. The MoE layers' telemetry is a window beside
the model (`MoETelemetry`, empty for the dense kind), called once per optimizer step and
read once per logged step. Two optional extras ride on the same steps: `[checkpoint]
keep_best` (a `BestTracker` offered each validation loss; a new best is checkpointed at
once and never pruned) and `[train] sample_every` (a `TrainingSampler` continues the
sample prompts and emits them as `sample` events; its own generator, so the training
RNG and batches are untouched, and its time is kept out of `sys/step_s`).

Several ranks (torchrun): `dist` (`DistContext`, distributed.py) is the one seam. It
shards the experts and wraps the model in DDP (`net` runs the training forwards, `model`
is the module itself), and every cross-rank step is one of its calls: gradient sync on
the last micro-batch, expert gradients and counts, the global gradient norm, the stop
flag agreed each step, one all-reduce of the logged step's host vector, rank 0's resume
state for all, and the checkpoint's parts gathered to rank 0, which alone writes it.
Only rank 0's emitter sends events; every rank evaluates the same windows. Samples during
training run in one process only (with several ranks they are off).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from moedesk.data.tokenizer import TokenizerError, install_in_run
from moedesk.profiles import profile_to_dict
from moedesk.profiles.schema import Profile
from moedesk.stats import names
from moedesk.train import matmul
from moedesk.train.analysis import (
    HASH_MODULUS,
    RoutingAnalysis,
    batch_fingerprint,
    expert_statistics,
)
from moedesk.train.checkpoint import BestTracker, CheckpointError, save_checkpoint
from moedesk.train.data import DataError, LMData, data_tokenizer
from moedesk.train.distributed import DistContext
from moedesk.train.emit import Emitter
from moedesk.train.generate import TrainingSampler
from moedesk.train.init_from import InitError, apply_init_request
from moedesk.train.model import LM
from moedesk.train.moe_telemetry import MoETelemetry
from moedesk.train.optim import build_optimizer, lr_at, set_lr
from moedesk.train.sampling import SampleError
from moedesk.train.speed import CompileClock, bf16_alert, prepare_model, resolve_threads
from moedesk.train.stopflag import StopFlag
from moedesk.train.system import restore_rng_states, rng_states, rss_mb, seed_everything

CHECKPOINT_FORMAT = "moedesk-lm-1"


def build_model(profile: Profile) -> LM:
    """The LM for a profile; the top-k kind's subclass lives in moe.py (imported lazily)."""
    if profile.kind == "topk":
        from moedesk.train.moe import MoELM
        return MoELM(profile.model, profile.moe)
    return LM(profile.model)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("train.device = 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # exp overflows a float past ~709


def step_line(step: int, total_steps: int, values: dict[str, float]) -> str:
    """The human progress line (seed 003's format; the aux loss only for MoE runs)."""
    parts = [f"Step {step}/{total_steps}", f"LM Loss: {values[names.TRAIN_LOSS]:.4f}"]
    if names.MOE_AUX_LOSS in values:
        parts.append(f"Aux Loss: {values[names.MOE_AUX_LOSS]:.4f}")
    parts += [f"LR: {values[names.TRAIN_LR]:.2e}",
              f"Tokens/sec: {values[names.TRAIN_TOKENS_PER_S]:.0f}"]
    return " | ".join(parts)


@torch.no_grad()
def evaluate(model: LM, batches: list, autocast) -> float:
    model.eval()
    losses = []
    for x_BT, y_BT in batches:
        with autocast():
            _, loss = model(x_BT, y_BT)
        losses.append(loss)
    model.train()
    return torch.stack(losses).mean().item()


def best_fields(best: BestTracker, step: int) -> dict:
    """What a checkpoint event says of keep-best: the step marked best and this one's score."""
    return {"best_step": best.step, "metric": best.metric, "score": best.score_at(step)}


def train_lm(profile: Profile, run_dir: Path, emitter: Emitter, resume: Path | None = None,
             stop_at: int | None = None, stop: StopFlag | None = None,
             dist: DistContext | None = None) -> str:
    """Train (or continue) an LM run; returns the finish status (completed|stopped|failed).
    `dist` is this process's place among several ranks (one process when None)."""
    dist = dist if dist is not None else DistContext.single()
    threads_before = torch.get_num_threads()
    threads = resolve_threads(profile.train.threads)  # 0: the supervisor's share, if any
    if threads > 0 and not dist.enabled:  # ranks: set by DistContext
        torch.set_num_threads(threads)
    try:  # in-process callers (tests, benchmarks) get their threads and kernel back
        with matmul.using(profile.train.cpu_matmul):
            return _train(profile, Path(run_dir), emitter, resume, stop_at,
                          stop if stop is not None else StopFlag(), dist)
    finally:
        torch.set_num_threads(threads_before)


def _train(profile: Profile, run_dir: Path, emitter: Emitter, resume: Path | None,
           stop_at: int | None, stop: StopFlag, dist: DistContext) -> str:
    tc = profile.train
    say = emitter.log if dist.is_main else (lambda _line: None)  # progress: rank 0 only
    # 1. device and seeds (init depends on the seed alone, so every rank builds one model)
    try:
        device = dist.device or resolve_device(tc.device)
        seed_everything(profile.seed)
        model = build_model(profile).to(device)
        # 1b. --init-from: another run's weights only (init_from.py; a resume has its own),
        # into the whole model before the ranks keep their experts
        init_note = apply_init_request(model, profile, run_dir) if resume is None else None
        sizes = {"total": model.num_params(), "active": model.num_active_params()}
        dist.shard(model, profile.moe.expert_parallel)  # keep this rank's experts
        dist.reseed(profile.seed)
        # 2. the data stream has its own generator, so model changes never shift batches
        data = LMData(profile.data, profile.seed, tc.batch_size, profile.model.vocab_size, device,
                      rank=dist.rank, world=dist.world)
        # the tokenizer travels with the run (sampling, routing views, export read it)
        tokenizer = data_tokenizer(profile.data, profile.model.vocab_size)
        if dist.is_main:
            install_in_run(tokenizer, run_dir)
        sampler = None
        # samples need the whole model in one process; a bare token array has no tokenizer
        if tc.sample_every > 0 and tokenizer is not None and not dist.enabled:
            sampler = TrainingSampler(model, profile, data.splits["val"], device, tokenizer)
    except (DataError, SampleError, TokenizerError, InitError) as exc:
        emitter.log(f"cannot start: {exc}")
        emitter.emit("finished", step=0, status="failed", reason=str(exc))
        return "failed"
    prepare_model(model, tc)  # [train] compile, activation_checkpointing
    net = dist.wrap(model)  # DDP with several ranks; forwards that train go through it
    optimizer = build_optimizer(model, tc)
    telemetry = MoETelemetry(model)
    use_bf16 = tc.bf16

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    val_batches = data.val_batches(tc.eval_batches)
    # routing of the validation windows, recorded during each evaluation (topk only)
    routing = RoutingAnalysis(model, data, tc.eval_batches * data.global_batch,
                              profile.model.vocab_size)
    params = [p for p in model.parameters() if p.requires_grad]
    best = BestTracker(profile.checkpoint.keep_best) if profile.checkpoint.keep_best else None

    # 3. resume: weights, optimizer, data position, every RNG, the telemetry window (rank
    # 0 reads the checkpoint and its --resume/--stop-at hold for every rank)
    step = 0
    stop_at = dist.broadcast_object(stop_at)
    resume = dist.broadcast_object(str(resume) if resume is not None else None)
    if resume is not None:
        try:
            state = dist.load_on_main(Path(resume))
            if state.get("kind") != profile.kind:
                raise CheckpointError(f"checkpoint {resume} is a {state.get('kind')!r} run, "
                                      f"not {profile.kind!r}")
            model.load_state_dict(dist.local_model_state(state["model"]))
            optimizer.load_state_dict(dist.local_optimizer_state(optimizer, state["optimizer"]))
            data.load_state_dict(state["data"])
            if best is not None:
                best.load_state_dict(state.get("best"))
            step = int(state["step"])
            own = dist.rank_part(state)  # this rank's part, same world size only
            # checkpoints before the telemetry window kept the same state as "extra"
            telemetry.load_state_dict((own or state).get("telemetry", state.get("extra", {})))
            if own is not None:
                restore_rng_states(own["rng"])
            elif dist.is_main:
                restore_rng_states(state["rng"])
            else:
                dist.reseed(profile.seed, step)
        except torch.distributed.DistError:
            raise  # lost the other ranks: __main__ reports it
        except (CheckpointError, KeyError, RuntimeError) as exc:
            reason = f"cannot resume from {resume}: {exc}"
            emitter.log(reason)
            emitter.emit("finished", step=0, status="failed", reason=reason)
            return "failed"

    last_step = tc.steps if stop_at is None else min(stop_at, tc.steps)
    # the global batch: every rank's micro-batches (tokens/s is the sum over ranks)
    tokens_per_step = data.global_batch * tc.grad_accum * profile.data.seq_len
    where = str(device) if not dist.enabled else f"{device} x {dist.world} ranks"
    emitter.emit("started", step=step, total_steps=tc.steps, pid=os.getpid(), device=where,
                 params=sizes, resumed_from=step if resume is not None else None)
    say(f"{profile.kind} run {profile.name}: {sizes['total']:,} parameters on {where} "
        f"({torch.get_num_threads()} threads{matmul.describe(device)}), steps {step + 1}.."
        f"{last_step} of {tc.steps}")
    if dist.enabled:
        emitter.log(dist.describe())
        say(f"global batch {data.global_batch * tc.grad_accum} sequences = {dist.world} ranks "
            f"x train.batch_size {tc.batch_size} x train.grad_accum {tc.grad_accum}")
    if init_note:
        say(init_note)
    precision_alert = bf16_alert(tc, device)
    if precision_alert and dist.is_main:
        emitter.emit("alert", step=step, **precision_alert)
        say(f"warning: {precision_alert['title']}: {precision_alert['text']}; "
            f"{precision_alert['action']}")

    def save(at_step: int) -> None:
        local = {"rng": rng_states(device), "telemetry": telemetry.state_dict()}
        parts = dist.checkpoint_parts(model, optimizer, local)  # None on ranks > 0
        info, error = None, None
        if parts is not None:
            state = {"format": CHECKPOINT_FORMAT, "kind": profile.kind, "step": at_step,
                     "config": profile_to_dict(profile), "data": data.state_dict(),
                     "best": best.state_dict() if best is not None else None,
                     "tokenizer": tokenizer.describe() if tokenizer is not None else None,
                     **local, **parts}
            try:
                info = save_checkpoint(state, run_dir, at_step, best=best)
            except CheckpointError as exc:
                error = str(exc)
        error = dist.broadcast_object(error)  # every rank fails with rank 0's write
        if error:
            raise CheckpointError(error)
        if info is not None:
            emitter.emit("checkpoint", step=at_step, path=str(info.path), size=info.size,
                         sha256=info.sha256, **(best_fields(best, at_step) if best else {}))

    def finish(status: str, reason: str) -> str:
        emitter.log(f"{status} at step {step}: {reason}")
        emitter.emit("finished", step=step, status=status, reason=reason)
        return status

    model.train()
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    t_last, steps_since_sync = time.perf_counter(), 0
    compile_clock = CompileClock(tc.compile, device)
    human_every = 10 * tc.log_every
    while step < last_step:
        step += 1
        lr = lr_at(step, tc)
        set_lr(optimizer, lr)

        # 4. forward and backward over the micro-batches of this step (this rank's slice of
        # each global micro-batch; DDP averages the gradients on the last one)
        loss_sum = torch.zeros((), device=device)
        batch_hash = torch.zeros((), dtype=torch.long, device=device)
        for micro in range(tc.grad_accum):
            x_BT, y_BT = data.train_batch()
            batch_hash = batch_fingerprint(x_BT, batch_hash, data.position_offset)
            with dist.sync(net, last=micro == tc.grad_accum - 1):
                with autocast():
                    _, loss = net(x_BT, y_BT)
                extra = model.extra_loss()
                total = loss if extra is None else loss + extra
                (total / tc.grad_accum).backward()
            loss_sum += loss.detach()
        train_loss = loss_sum / tc.grad_accum
        dist.finish_grads()  # expert shards: the average DDP takes of the rest

        # 5. clip (or just measure) the global gradient norm, then update
        grad_norm = dist.clip_grad_norm_(params, tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dist.reduce_expert_counts(telemetry.ffns)  # the whole step's load, on every rank
        telemetry.after_step()  # before the bias update zeroes the step's expert counts
        model.after_optimizer_step()
        nonfinite |= ~torch.isfinite(train_loss) | ~torch.isfinite(grad_norm)
        steps_since_sync += 1
        stop_requested = dist.any_rank(stop.requested)  # every rank stops after this step
        compile_s = compile_clock.first_step_done()
        if compile_s is not None:  # the compiling step is reported apart from sys/step_s
            emitter.log(f"torch.compile: first step {compile_s:.1f} s (compiling included)")
            t_last, steps_since_sync = time.perf_counter(), 0

        # 6. read back only where something is reported or saved
        is_last = step == last_step
        do_log = step % tc.log_every == 0 or is_last
        do_eval = (tc.eval_every > 0 and step % tc.eval_every == 0) or is_last
        do_ckpt = (profile.checkpoint.every > 0 and step % profile.checkpoint.every == 0) or is_last
        do_sample = sampler is not None and sampler.due(step)
        if not (do_log or do_eval or do_ckpt or do_sample or stop_requested):
            continue
        # one host sync for everything (one all-reduce first with several ranks: means of
        # loss, norm and telemetry, sums of batch hash, memory and slot counts); float64
        # keeps the int batch hash and counts exact
        mean_V = torch.cat([torch.stack([train_loss.double(), grad_norm.to(device).double(),
                                         nonfinite.double()]), telemetry.device_values()])
        sum_V = torch.cat([batch_hash.double().view(1), torch.tensor(
            [rss_mb(), *telemetry.routed_slots, *telemetry.dropped_slots],
            dtype=torch.float64, device=device)])
        mean_V, sum_V = dist.reduce_for_log(mean_V, sum_V)
        host, sums = mean_V.tolist(), sum_V.tolist()
        loss_f, grad_norm_f, bad = host[:3]
        batch_hash_f, rss_f = float(int(sums[0]) % HASH_MODULUS), sums[1]
        if dist.enabled:  # the dropped-slot share of every rank's slots
            n_layers = len(telemetry.routed_slots)
            telemetry.routed_slots = [int(v) for v in sums[2:2 + n_layers]]
            telemetry.dropped_slots = [int(v) for v in sums[2 + n_layers:]]
        now = time.perf_counter()
        # (no step since the sync: the compiling first step is being logged, on its own)
        step_s = (now - t_last) / steps_since_sync if steps_since_sync else compile_s
        if do_log or bad:
            values = {names.TRAIN_LOSS: loss_f, names.TRAIN_LR: lr,
                      names.TRAIN_GRAD_NORM: grad_norm_f,
                      names.TRAIN_TOKENS_PER_S: tokens_per_step / step_s,
                      names.SYS_STEP_S: step_s, names.SYS_RSS_MB: rss_f,
                      names.DATA_BATCH_HASH: batch_hash_f}
            moe_values, loads = telemetry.read(host[3:])
            values.update(moe_values)
            emitter.metrics(step, values)
            if loads:
                emitter.expert_load(step, loads)
            if step % human_every == 0:
                say(step_line(step, tc.steps, values))
        if bad:
            what = "loss" if not math.isfinite(loss_f) else "gradient norm"
            return finish("failed", f"non-finite {what} at step {step}")

        # 7. evaluate on the fixed validation windows (a signal stop skips it to exit fast);
        # a stop asked for since the step ended counts (the ranks agree on it again)
        stop_requested = stop_requested or dist.any_rank(stop.requested)
        if do_eval and not (stop_requested and not is_last):
            with routing.recording():
                val_loss = evaluate(model, val_batches, autocast)
            payloads = routing.payloads()
            for name, payload in payloads.items():
                emitter.emit("analysis", step=step, name=name, payload=payload)
            emitter.metrics(step, {names.VAL_LOSS: val_loss, names.VAL_PPL: perplexity(val_loss)})
            say(f"Validation - step {step} | LM Loss: {val_loss:.4f}")
            if payloads:
                say(expert_statistics(payloads))
            if not math.isfinite(val_loss):
                return finish("failed", f"non-finite validation loss at step {step}")
            if best is not None and best.offer(step, val_loss):
                do_ckpt = True  # a new best is saved at once: the best step has a file

        # 7b. continuations of the sample prompts (skipped on a stop request)
        if do_sample and not stop_requested:
            sampler.run(step, emitter)

        # 8. checkpoint at its interval, at the end, and on a stop request
        stop_requested = stop_requested or dist.any_rank(stop.requested)
        if do_ckpt or stop_requested:
            try:
                save(step)
            except CheckpointError as exc:
                return finish("failed", str(exc))
        if stop_requested:
            return finish("stopped", stop.reason or "stop requested (on another rank)")
        t_last, steps_since_sync = time.perf_counter(), 0

    if step < tc.steps:
        return finish("stopped", f"reached --stop-at {stop_at}")
    return finish("completed", f"trained {tc.steps} steps")

