"""`MoedeskCallback`: a transformers `Trainer` run as a moedesk run, router load included.

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[MoedeskCallback(name="mixtral-ft")])

What it does (docs/tracking.md):
- on train begin: `moedesk.init` (or joins `moedesk watch`'s run) with the model config
  and the training arguments, `total_steps` = max_steps, the MoE shape it found, and
  `graceful_stop` (it stops the Trainer itself); hooks every router module it recognises;
- after each optimizer step: the routers' top-k choices counted over that step's
  training forwards (gradient-accumulation micro-batches summed; evaluation forwards and
  checkpointing recomputes left out) as one `log_expert_load`, plus `sys/step_s` and
  `train/tokens_per_s`; when a stop was requested (`moedesk stop`, SIGTERM, a health
  rule at `stop_on`) it sets `should_save` and `should_training_stop`, so the Trainer
  writes a checkpoint and ends;
- on log: what the Trainer logs, renamed (`loss` -> `train/loss`, `learning_rate` ->
  `train/lr`, `eval_loss` -> `val/loss` with `val/ppl`, `eval_x` -> `val/x`, else
  `train/x`); on save: the checkpoint folder; on train end: `finish` (a run it made).

Recognised routers: any module whose class a transformers model names as the source of
its `router_logits` (`_can_record_outputs`, transformers >= 5), read through the
`watch_router` contract (their output holds the chosen expert ids, or logits). Tested:
`TESTED_ROUTERS`. A model without one gets a warning; its curves are still logged.
Only the main process (rank 0) logs, counting the tokens it routes itself.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings

from transformers import TrainerCallback

import moedesk
from moedesk.track.router import experts_of, top_k_of

# router classes trained here with the callback (tests/integration/test_hf_callback.py)
TESTED_ROUTERS = ("MixtralTopKRouter", "Qwen2MoeTopKRouter", "Qwen3MoeTopKRouter",
                  "OlmoeTopKRouter")
CONFIG_TOP_K = ("num_experts_per_tok", "moe_top_k", "top_k", "num_selected_experts")
RENAMED = {"loss": "train/loss", "learning_rate": "train/lr", "grad_norm": "train/grad_norm",
           "epoch": "train/epoch", "eval_loss": "val/loss",
           "train_loss": "train/mean_loss"}  # the end-of-training summary, not a step's loss
_LAYER = re.compile(r"\.(\d+)(?:\.|$)")


def metric_name(key: str) -> str:
    """The moedesk name of a Trainer log key."""
    if key in RENAMED:
        return RENAMED[key]
    if key.startswith("eval_"):
        return "val/" + key.removeprefix("eval_")
    return "train/" + key.removeprefix("train_")


def _router_classes(model) -> tuple[set[type], set[str]]:
    """The classes (and class-name suffixes) the model's parts declare as routers."""
    classes, names = set(), set()
    for module in model.modules():
        recorders = getattr(type(module), "_can_record_outputs", None) or {}
        recorder = recorders.get("router_logits") if isinstance(recorders, dict) else None
        if recorder is None:
            continue
        target = getattr(recorder, "target_class", recorder)
        if isinstance(target, type):
            classes.add(target)
        suffix = getattr(recorder, "class_name", None)
        if suffix:
            names.add(suffix)
    return classes, names


def find_routers(model) -> list[tuple[str, object, int]]:
    """(qualified name, module, layer index) of each router module, in model order; the
    layer is the first number in the module's name (`model.layers.3.mlp.gate` -> 3), or
    the router's position when that number does not tell routers apart."""
    classes, suffixes = _router_classes(model)
    found = []
    for name, module in model.named_modules():
        cls = type(module)
        if cls in classes or any(cls.__name__.endswith(s) for s in suffixes):
            match = _LAYER.search("." + name)
            found.append((name, module, int(match.group(1)) if match else len(found)))
    if len({layer for _, _, layer in found}) < len(found):  # two routers in one block
        found = [(name, module, i) for i, (name, module, _) in enumerate(found)]
    return found


def _config_top_k(config) -> int | None:
    for key in CONFIG_TOP_K:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class MoedeskCallback(TrainerCallback):
    """Log a Trainer's curves and its MoE routers' expert load to moedesk.

    name, tags, home, stop_on, health: as `moedesk.init`; config: extra entries stored
    beside the model config and training arguments; run: an existing `moedesk.Run` to
    log to instead (then the callback never finishes it).
    """

    def __init__(self, name: str | None = None, *, tags: list[str] | tuple = (),
                 home: str | None = None, stop_on: str | None = None,
                 health: dict | None = None, config: dict | None = None, run=None):
        self.options = {"name": name, "tags": list(tags), "home": home, "stop_on": stop_on,
                        "health": health}
        self.extra_config = dict(config or {})
        self.run = run
        self.owns_run = run is None
        self.routers: list[tuple[str, object, int]] = []
        self.last_step_wall: float | None = None
        self.top_k = 1

    # ---- setup -------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        self.routers = find_routers(model)
        moe = self._shape(model, args, state)
        if self.owns_run:
            config = {**self.extra_config, "model": _to_dict(getattr(model, "config", None)),
                      "training_args": args.to_dict(), "model_class": type(model).__name__}
            self.run = moedesk.init(config=config, total_steps=state.max_steps or None,
                                    moe=moe, graceful_stop=True, **self.options)
        self.top_k = moe.get("top_k", 1)
        for _name, module, layer in self.routers:
            self.run.watch_router(module, top_k=self.top_k, num_experts=experts_of(module),
                                  layer=layer)
        self.last_step_wall = time.time()

    def _shape(self, model, args, state) -> dict:
        config = getattr(model, "config", None)
        if not self.routers:
            warnings.warn(f"moedesk: no MoE router recognised in {type(model).__name__}; "
                          "logging its curves only (recognised routers: docs/tracking.md)",
                          stacklevel=3)
            return {}
        first = self.routers[0][1]
        top_k = top_k_of(first) or _config_top_k(config)
        if top_k is None:
            warnings.warn(f"moedesk: cannot tell the top-k of {type(first).__name__}; logging "
                          "curves only", stacklevel=3)
            self.routers = []
            return {}
        experts = max(experts_of(m) or 0 for _, m, _ in self.routers) or None
        untested = sorted({type(m).__name__ for _, m, _ in self.routers} - set(TESTED_ROUTERS))
        if untested:
            warnings.warn(f"moedesk: counting routers {', '.join(untested)} by the generic "
                          "contract (not among the tested classes)", stacklevel=3)
        coef = getattr(config, "router_aux_loss_coef", 0) or 0
        moe = {"top_k": top_k, "warmup_steps": int(args.get_warmup_steps(state.max_steps or 0)),
               "balanced": bool(getattr(config, "output_router_logits", False) and coef > 0)}
        if experts:
            moe["num_experts"] = experts
        return moe

    # ---- per step ----------------------------------------------------------------------

    def on_step_end(self, args, state, control, **kwargs):
        if self.run is None or self.run.finished:
            return
        step = state.global_step
        now = time.time()
        extra = {}
        if self.last_step_wall is not None:
            extra["sys/step_s"] = now - self.last_step_wall
        self.last_step_wall = now
        loads = self.run.log_router_load(step)
        if loads and extra.get("sys/step_s"):
            tokens = sum(next(iter(loads.values()))) / self.top_k
            extra["train/tokens_per_s"] = tokens / extra["sys/step_s"]
        if extra:
            self.run.log(extra, step=step)
        if self.run.should_stop and not control.should_training_stop:
            print(f"moedesk: stop requested for run {self.run.id} ({self.run.name}): saving a "
                  f"checkpoint at step {step} and stopping", flush=True)
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.run is None or self.run.finished or not logs:
            return
        values = {}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[metric_name(key)] = float(value)
        if "val/loss" in values and values["val/loss"] < 50:
            values["val/ppl"] = math.exp(values["val/loss"])
        if values:
            self.run.log(values, step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if self.run is None or self.run.finished:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            self.run.log_checkpoint(folder, step=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.run is None:
            return
        self.run.unwatch_routers()
        if self.owns_run and not self.run.finished:
            self.run.finish()
            self.run = None


def _to_dict(config) -> dict:
    if config is None:
        return {}
    try:
        return config.to_dict()
    except Exception:  # noqa: BLE001 - an odd config must not stop training
        return {"repr": repr(config)}


__all__ = ["MoedeskCallback", "TESTED_ROUTERS", "find_routers", "metric_name"]
