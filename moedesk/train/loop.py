"""The training loop of the LM kinds (dense and top-k MoE): `train_lm`.

Reads top to bottom: set up, build, maybe resume, then per step forward/backward over
micro-batches, clip, step, and at their intervals log, evaluate and checkpoint. Every
result leaves through the `Emitter` (events on stdout, human lines on stderr): metrics
(with `data/batch_hash`, a checksum of the logged step's batches), expert loads and
routing `analysis` events for MoE models, checkpoints, and one `finished`.

Telemetry is kept off the hot path: loss and gradient norm stay on the device and are
read back (one sync) only on log, eval and checkpoint steps. A non-finite value seen in
between is remembered on the device, so no checkpoint ever holds a non-finite state.
"""

from __future__ import annotations

import math
import os
import random
import resource
import time
from pathlib import Path

import numpy as np
import torch

from moedesk.profiles import profile_to_dict
from moedesk.profiles.schema import Profile
from moedesk.train.analysis import RoutingAnalysis, batch_fingerprint
from moedesk.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from moedesk.train.data import DataError, LMData
from moedesk.train.emit import Emitter
from moedesk.train.model import LM
from moedesk.train.optim import build_optimizer, lr_at, set_lr
from moedesk.train.stopflag import StopFlag

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


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # exp overflows a float past ~709


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


def train_lm(profile: Profile, run_dir: Path, emitter: Emitter, resume: Path | None = None,
             stop_at: int | None = None, stop: StopFlag | None = None) -> str:
    """Train (or continue) an LM run; returns the finish status (completed|stopped|failed)."""
    threads_before = torch.get_num_threads()
    if profile.train.threads > 0:
        torch.set_num_threads(profile.train.threads)
    try:
        return _train(profile, Path(run_dir), emitter, resume, stop_at,
                      stop if stop is not None else StopFlag())
    finally:  # in-process callers (tests, benchmarks) get their thread count back
        torch.set_num_threads(threads_before)


def _train(profile: Profile, run_dir: Path, emitter: Emitter, resume: Path | None,
           stop_at: int | None, stop: StopFlag) -> str:
    tc = profile.train
    # 1. device and seeds (init depends on the seed alone)
    try:
        device = resolve_device(tc.device)
        seed_everything(profile.seed)
        model = build_model(profile).to(device)
        # 2. the data stream has its own generator, so model changes never shift batches
        data = LMData(profile.data, profile.seed, tc.batch_size, profile.model.vocab_size, device)
    except DataError as exc:
        emitter.log(f"cannot start: {exc}")
        emitter.emit("finished", step=0, status="failed", reason=str(exc))
        return "failed"
    optimizer = build_optimizer(model, tc)
    use_bf16 = tc.bf16

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    val_batches = data.val_batches(tc.eval_batches)
    # routing of the validation windows, recorded during each evaluation (topk only)
    routing = RoutingAnalysis(model, data, tc.eval_batches * tc.batch_size,
                              profile.model.vocab_size)
    params = [p for p in model.parameters() if p.requires_grad]

    # 3. resume: weights, optimizer, data position, every RNG, the model's extra state
    step = 0
    if resume is not None:
        try:
            state = load_checkpoint(Path(resume))
            if state.get("kind") != profile.kind:
                raise CheckpointError(f"checkpoint {resume} is a {state.get('kind')!r} run, "
                                      f"not {profile.kind!r}")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            data.load_state_dict(state["data"])
            model.load_extra_state(state.get("extra", {}))
            restore_rng_states(state["rng"])
            step = int(state["step"])
        except (CheckpointError, KeyError, RuntimeError) as exc:
            reason = f"cannot resume from {resume}: {exc}"
            emitter.log(reason)
            emitter.emit("finished", step=0, status="failed", reason=reason)
            return "failed"

    last_step = tc.steps if stop_at is None else min(stop_at, tc.steps)
    tokens_per_step = tc.batch_size * tc.grad_accum * profile.data.seq_len
    emitter.emit("started", step=step, total_steps=tc.steps, pid=os.getpid(), device=str(device),
                 params={"total": model.num_params(), "active": model.num_active_params()},
                 resumed_from=step if resume is not None else None)
    emitter.log(f"{profile.kind} run {profile.name}: {model.num_params():,} parameters on "
                f"{device}, steps {step + 1}..{last_step} of {tc.steps}")

    def save(at_step: int) -> None:
        state = {"format": CHECKPOINT_FORMAT, "kind": profile.kind, "step": at_step,
                 "config": profile_to_dict(profile), "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "data": data.state_dict(),
                 "rng": rng_states(device), "extra": model.extra_state()}
        info = save_checkpoint(state, run_dir, at_step)
        emitter.emit("checkpoint", step=at_step, path=str(info.path), size=info.size,
                     sha256=info.sha256)

    def finish(status: str, reason: str) -> str:
        emitter.log(f"{status} at step {step}: {reason}")
        emitter.emit("finished", step=step, status=status, reason=reason)
        return status

    model.train()
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    t_last, steps_since_sync = time.perf_counter(), 0
    human_every = 10 * tc.log_every
    while step < last_step:
        step += 1
        lr = lr_at(step, tc)
        set_lr(optimizer, lr)

        # 4. forward and backward over the micro-batches of this step
        loss_sum = torch.zeros((), device=device)
        batch_hash = torch.zeros((), dtype=torch.long, device=device)
        for _ in range(tc.grad_accum):
            x_BT, y_BT = data.train_batch()
            batch_hash = batch_fingerprint(x_BT, batch_hash)
            with autocast():
                _, loss = model(x_BT, y_BT)
            extra = model.extra_loss()
            total = loss if extra is None else loss + extra
            (total / tc.grad_accum).backward()
            loss_sum += loss.detach()
        train_loss = loss_sum / tc.grad_accum

        # 5. clip (or just measure) the global gradient norm, then update
        if tc.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        else:
            grads = [p.grad for p in params if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.after_optimizer_step()
        nonfinite |= ~torch.isfinite(train_loss) | ~torch.isfinite(grad_norm)
        steps_since_sync += 1

        # 6. read back only where something is reported or saved
        is_last = step == last_step
        do_log = step % tc.log_every == 0 or is_last
        do_eval = (tc.eval_every > 0 and step % tc.eval_every == 0) or is_last
        do_ckpt = (profile.checkpoint.every > 0 and step % profile.checkpoint.every == 0) or is_last
        if not (do_log or do_eval or do_ckpt or stop.requested):
            continue
        # one host sync for everything; float64 keeps the int batch hash exact
        loss_f, grad_norm_f, bad, batch_hash_f = torch.stack(
            [train_loss.double(), grad_norm.to(device).double(), nonfinite.double(),
             batch_hash.double()]).tolist()
        now = time.perf_counter()
        step_s = (now - t_last) / steps_since_sync
        if do_log or bad:
            values = {"train/loss": loss_f, "train/lr": lr, "train/grad_norm": grad_norm_f,
                      "train/tokens_per_s": tokens_per_step / step_s, "sys/step_s": step_s,
                      "sys/rss_mb": rss_mb(), "data/batch_hash": batch_hash_f}
            for name, value in model.log_values().items():
                values[name] = float(value)
            emitter.metrics(step, values)
            loads = model.expert_loads()
            if loads:
                emitter.expert_load(step, loads)
            if step % human_every == 0:
                emitter.log(f"Step {step}/{tc.steps} | LM Loss: {loss_f:.4f} | LR: {lr:.2e} | "
                            f"Tokens/sec: {tokens_per_step / step_s:.0f}")
        if bad:
            what = "loss" if not math.isfinite(loss_f) else "gradient norm"
            return finish("failed", f"non-finite {what} at step {step}")

        # 7. evaluate on the fixed validation windows (a signal stop skips it to exit fast)
        if do_eval and not (stop.requested and not is_last):
            with routing.recording():
                val_loss = evaluate(model, val_batches, autocast)
            for name, payload in routing.payloads().items():
                emitter.emit("analysis", step=step, name=name, payload=payload)
            emitter.metrics(step, {"val/loss": val_loss, "val/ppl": perplexity(val_loss)})
            emitter.log(f"Validation - step {step} | LM Loss: {val_loss:.4f}")
            if not math.isfinite(val_loss):
                return finish("failed", f"non-finite validation loss at step {step}")

        # 8. checkpoint at its interval, at the end, and on a stop request
        if do_ckpt or stop.requested:
            try:
                save(step)
            except CheckpointError as exc:
                return finish("failed", str(exc))
        if stop.requested:
            return finish("stopped", stop.reason or "stop requested")
        t_last, steps_since_sync = time.perf_counter(), 0

    if step < tc.steps:
        return finish("stopped", f"reached --stop-at {stop_at}")
    return finish("completed", f"trained {tc.steps} steps")

