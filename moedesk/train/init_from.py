"""Start a run's weights from another run's checkpoint (`moedesk run --init-from`).

Weights only: the optimizer, the schedule, the step counter, the data order and the RNGs
start fresh from the new profile, so this is how to fine-tune with a new learning rate or
new data. `RUN_DIR/init_from.json` (written by runner/init_from.py before the trainer
starts) names the checkpoint and its sha256; `apply_init_request` loads it (verified) into
a freshly built model before the first step. A resumed run has its own checkpoints and
never reads the request again.

`initial_state` maps the source state dict onto the target model, tensor by tensor:
- same kind (dense -> dense, topk -> topk): every tensor copied; a tensor missing on
  either side or of another shape is an `InitError` naming it and both shapes;
- dense -> topk, upcycling (seed 003's FAQ, "sparse upcycling"): each MoE block's experts
  are copies of the dense block's SwiGLU FFN (w1 -> w1_EFD[e], w3 -> w3_EFD[e],
  w2 -> w2_EDF[e] for every e), plus `[moe] upcycle_noise` x the tensor's std of
  Gaussian noise per copy (a generator seeded from the profile seed); the router keeps
  the target's own small init (`moe.router_init_std`) and the balancing bias starts at
  zero; everything else (embeddings, attention, norms, dense blocks) is copied. With
  equal experts and gates that sum to 1 the upcycled model computes exactly the dense
  model's function (tests/unit/test_init_from.py: first-step loss equal within 1e-5);
  the expert width must then be the dense FFN's (`moe.expert_hidden`);
- topk -> dense is refused (which expert would the dense FFN be?).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from moedesk.paths import init_from_file
from moedesk.profiles.schema import LM_KINDS, Profile
from moedesk.train.checkpoint import CheckpointError, load_checkpoint
from moedesk.train.moe import LEGACY_NAMES, MoEFFN

# dense FFN parameter (under blocks.{i}.ffn.) -> the stacked expert tensor it fills
UPCYCLE = {"w1.weight": "experts.w1_EFD", "w3.weight": "experts.w3_EFD",
           "w2.weight": "experts.w2_EDF"}
NOISE_STREAM = 7_777  # offsets the profile seed for the upcycling noise generator


class InitError(Exception):
    """A checkpoint whose weights cannot start this profile's model; names the tensor."""


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


def _current_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Checkpoints from before the shape-suffixed names, renamed (moe.LEGACY_NAMES)."""
    out = {}
    for key, value in state.items():
        for old, new in LEGACY_NAMES.items():
            if key.endswith(".ffn." + old):
                key = key[:-len(old)] + new
                break
        out[key] = value
    return out


def initial_state(model: nn.Module, source: dict, profile: Profile, where: str = "the checkpoint"
                  ) -> dict[str, Tensor]:
    """The target model's full state dict from a source checkpoint `source` (a loaded
    checkpoint dict with "kind" and "model")."""
    src_kind, kind = source.get("kind"), profile.kind
    if src_kind not in LM_KINDS or kind not in LM_KINDS:
        raise InitError(f"{where} is a {src_kind!r} run and the profile a {kind!r} one; "
                        "--init-from starts a dense or topk model from a dense or topk run")
    if src_kind == "topk" and kind == "dense":
        raise InitError(f"{where} is a topk run; a dense model cannot start from its experts "
                        "(--init-from goes dense -> dense, topk -> topk or dense -> topk)")
    src = _current_names(source["model"])
    target = model.state_dict()
    upcycled = {f"blocks.{m.layer_idx}.ffn." for m in model.modules()
                if isinstance(m, MoEFFN)} if src_kind == "dense" else set()
    generator = torch.Generator().manual_seed(profile.seed + NOISE_STREAM)
    noise = profile.moe.upcycle_noise
    out, used = {}, set()
    for name, fresh in target.items():
        prefix = next((p for p in upcycled if name.startswith(p)), None)
        if prefix is not None:
            rest = name[len(prefix):]
            dense = next((d for d, e in UPCYCLE.items() if e == rest), None)
            if dense is None:  # the router and the balancing bias keep their fresh init
                out[name] = fresh
                continue
            key = prefix + dense
            if key not in src:
                raise InitError(f"tensor {name}: upcycling needs the dense FFN {key}, which "
                                f"{where} does not have")
            w = src[key].float()
            if tuple(w.shape) != tuple(fresh.shape[1:]):
                raise InitError(f"tensor {name}: {key} in {where} is {_shape(w)}, each expert "
                                f"here is {list(fresh.shape[1:])}; upcycling copies the dense "
                                f"FFN into every expert, so set moe.expert_hidden = "
                                f"{w.shape[0] if dense != 'w2.weight' else w.shape[1]} (the "
                                "dense FFN's width)")
            copies = w.unsqueeze(0).repeat(fresh.shape[0], *([1] * w.ndim))
            if noise > 0:
                copies += noise * w.std() * torch.randn(copies.shape, generator=generator)
            out[name] = copies.to(fresh.dtype)
            used.add(key)
            continue
        if name not in src:
            raise InitError(f"tensor {name} ({_shape(fresh)}): {where} has no such tensor; the "
                            "model's structure differs (model.n_layers, moe.moe_layers, ...)")
        if src[name].shape != fresh.shape:
            raise InitError(f"tensor {name}: {where} has shape {_shape(src[name])}, this profile "
                            f"builds {_shape(fresh)}; --init-from needs the same [model] "
                            "(dim, n_layers, heads, vocab_size, widths)")
        out[name] = src[name].to(fresh.dtype)
        used.add(name)
    extra = sorted(set(src) - used)
    if extra:
        raise InitError(f"tensor {extra[0]} of {where} has no place in this profile's model"
                        + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                        + "; the model's structure differs")
    return out


def load_initial_weights(model: nn.Module, profile: Profile, checkpoint: Path,
                         sha256: str | None = None) -> dict:
    """Load a checkpoint's weights into `model` (InitError on any problem); returns the
    source checkpoint's kind and step."""
    try:
        source = load_checkpoint(Path(checkpoint), sha256)
    except CheckpointError as exc:
        raise InitError(str(exc)) from None
    state = initial_state(model, source, profile, f"checkpoint {checkpoint}")
    model.load_state_dict(state)
    return {"kind": source.get("kind"), "step": source.get("step")}


def check_init(profile: Profile, checkpoint: Path) -> None:
    """Raise InitError now (before any run is created) when `checkpoint` cannot start the
    profile's model; the model is built on the meta device, so nothing is allocated."""
    from moedesk.train.loop import build_model  # the loop imports this module

    with torch.device("meta"):
        model = build_model(profile)
    try:
        source = load_checkpoint(Path(checkpoint))
    except CheckpointError as exc:
        raise InitError(str(exc)) from None
    initial_state(model, source, profile, f"checkpoint {checkpoint}")


def apply_init_request(model: nn.Module, profile: Profile, run_dir: Path) -> str | None:
    """Apply `RUN_DIR/init_from.json` when there is one; a line for the log, else None."""
    path = init_from_file(run_dir)
    if not path.is_file():
        return None
    try:
        request = json.loads(path.read_text())
        checkpoint, sha256 = Path(request["checkpoint"]), request.get("sha256")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InitError(f"cannot read {path}: {exc}") from None
    source = load_initial_weights(model, profile, checkpoint, sha256)
    how = "upcycled from a dense run" if source["kind"] != profile.kind else "weights only"
    return (f"initialised from run {request.get('run_id')} step {source['step']} ({how}; "
            f"fresh optimizer, schedule and step counter): {checkpoint}")
