"""Autoregressive generation for the LM kinds: KV cache, sampling, streaming, routing per token.

Reads top to bottom: the cache, the choice of the next token, routing capture, then
`Sampler`, which continues a prompt one token at a time and yields each as it is made.

- `KVCache`: per block, the keys and values of every position fed so far, preallocated
  for the context (`model.max_seq_len`); `LM.forward(idx, cache=...)` appends to it and
  attends over it, so each new token costs one position's forward, and its logits equal
  those of a full forward over the same tokens (tests/unit/test_generate.py, 1e-5 fp32).
  When the context is full the window slides: the cache is rebuilt from the last half
  of the context, so generation can run past `max_seq_len`.
- `next_token`: temperature 0 = greedy (argmax); otherwise logits / temperature, then
  top-k, then top-p (the smallest set of tokens holding at least p of the probability),
  drawn with a CPU `torch.Generator` seeded from the settings: one seed gives one text,
  on CPU or CUDA, and the process-wide RNG (the trainer's) is never touched.
- `RoutingCapture`: a forward hook on each MoE layer's router (analysis.py's way: no
  patching) records every fed token's experts and gate weights.
- `Sampler.stream`: yields `Token(id, text, prompt, routes)`, prompt tokens first; a
  generated token is yielded once it has been fed back (so its routing is known).
- `load_sampler`: a checkpoint -> a ready `Sampler` (no supervisor, no store);
  `TrainingSampler`: the trainer's `[train] sample_every` continuations of
  `default_prompts`, as `sample` events.

Shape letters (model.py's legend): B batch (1 here), G key/value heads, T new positions,
S positions in the cache, H head width, V vocabulary, K experts per token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from moedesk.profiles import Profile, profile_from_dict
from moedesk.profiles.schema import LM_KINDS
from moedesk.train.checkpoint import CheckpointError, load_checkpoint
from moedesk.train.moe import MoEFFN
from moedesk.train.sampling import (
    SAMPLE_ERRORS,
    SampleError,
    SampleSettings,
    Tokenizer,
    sentence_start,
    tokenizer_for,
)


# ---- the cache ---------------------------------------------------------------------------
class LayerKV:
    """One block's keys and values [B, G, S, H], allocated on first use."""

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0
        self.k_BGSH: Tensor | None = None
        self.v_BGSH: Tensor | None = None

    def update(self, k_BGTH: Tensor, v_BGTH: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Append T positions; (keys and values of all S + T, mask [T, S + T] or None)."""
        B, G, T, H = k_BGTH.shape
        S = self.length
        if S + T > self.capacity:
            raise SampleError(f"the KV cache holds {self.capacity} positions; {S + T} asked")
        if self.k_BGSH is None:
            self.k_BGSH = k_BGTH.new_empty(B, G, self.capacity, H)
            self.v_BGSH = v_BGTH.new_empty(B, G, self.capacity, H)
        self.k_BGSH[:, :, S:S + T] = k_BGTH
        self.v_BGSH[:, :, S:S + T] = v_BGTH
        self.length = S + T
        # one new position sees everything; several see the cache and their own past
        mask = None if T == 1 else torch.ones(T, S + T, dtype=torch.bool,
                                              device=k_BGTH.device).tril(S)
        return self.k_BGSH[:, :, :S + T], self.v_BGSH[:, :, :S + T], mask


class KVCache:
    """The cache of every block of an LM (`LM.forward(idx, cache=...)`)."""

    def __init__(self, n_layers: int, capacity: int):
        self.capacity = capacity
        self.layers = [LayerKV(capacity) for _ in range(n_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    def reset(self) -> None:
        for layer in self.layers:
            layer.length = 0


# ---- choosing the next token -------------------------------------------------------------
def next_token(logits_V: Tensor, settings: SampleSettings, generator: torch.Generator) -> int:
    """One token id from the last position's logits (on CPU)."""
    logits_V = logits_V.float()
    if settings.temperature == 0:
        return int(logits_V.argmax())
    logits_V = logits_V / settings.temperature
    if 0 < settings.top_k < logits_V.numel():
        kth = torch.topk(logits_V, settings.top_k).values[-1]
        logits_V = logits_V.masked_fill(logits_V < kth, float("-inf"))
    if settings.top_p < 1.0:
        sorted_V, order_V = logits_V.sort(descending=True)
        probs_V = sorted_V.softmax(-1)
        # drop a token when the tokens before it already hold p (the first always stays)
        drop_V = probs_V.cumsum(-1) - probs_V >= settings.top_p
        logits_V = logits_V.scatter(0, order_V, sorted_V.masked_fill(drop_V, float("-inf")))
    probs_V = logits_V.softmax(-1)
    return int(torch.multinomial(probs_V, 1, generator=generator))


# ---- routing capture -----------------------------------------------------------------------
def _record(store: list, _router: nn.Module, _args: tuple, out: tuple) -> None:
    # a forward hook on a router: out = (ids_TK, gates_TK, probs_TE, logits_TE)
    store.append((out[0].detach().cpu(), out[1].detach().float().cpu()))


class RoutingCapture:
    """Every MoE layer's chosen experts and gate weights, per fed token."""

    def __init__(self, model: nn.Module):
        self.layers = {m.layer_idx: m for m in model.modules() if isinstance(m, MoEFFN)}
        self._seen: dict[int, list] = {i: [] for i in self.layers}
        self._handles = [m.router.register_forward_hook(partial(_record, self._seen[i]))
                         for i, m in self.layers.items()]

    def take(self, last: int | None = None) -> list[dict[int, tuple[list[int], list[float]]]]:
        """Per token of the forwards since the last call (only the `last` ones when given):
        {layer: (experts, gate weights)}, experts in the router's order."""
        per_layer = {}
        for layer, chunks in self._seen.items():
            ids_TK = torch.cat([c[0] for c in chunks]) if chunks else torch.zeros(0, 0)
            gates_TK = torch.cat([c[1] for c in chunks]) if chunks else torch.zeros(0, 0)
            if last is not None:
                ids_TK, gates_TK = ids_TK[-last:], gates_TK[-last:]
            per_layer[layer] = (ids_TK.tolist(), gates_TK.tolist())
            chunks.clear()
        n = len(next(iter(per_layer.values()))[0]) if per_layer else 0
        return [{layer: (ids[t], gates[t]) for layer, (ids, gates) in per_layer.items()}
                for t in range(n)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


# ---- the sampler -----------------------------------------------------------------------------
@dataclass
class Token:
    id: int
    text: str  # the text this token completes ("" inside a multi-byte character)
    prompt: bool  # part of the prompt (not generated)
    routes: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)


class Sampler:
    """An LM in eval mode with its tokenizer, continuing prompts on `device`."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, device: torch.device,
                 profile: Profile | None = None, step: int | None = None):
        self.model, self.tokenizer, self.device = model, tokenizer, torch.device(device)
        self.profile, self.step = profile, step
        self.context = model.cfg.max_seq_len
        self.moe_layers = sorted(m.layer_idx for m in model.modules() if isinstance(m, MoEFFN))

    def check_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise SampleError("the prompt is empty; give at least one character")
        if len(ids) > self.context:
            raise SampleError(f"the prompt is {len(ids)} tokens, longer than this model's "
                              f"context (model.max_seq_len = {self.context}); shorten it")

    @torch.no_grad()
    def _forward(self, ids: list[int], cache: KVCache) -> Tensor:
        """Feed `ids` after what the cache holds; the last position's logits [V] on CPU."""
        idx_BT = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits_BTV, _ = self.model(idx_BT, cache=cache)
        return logits_BTV[0, -1].float().cpu()

    def _feed(self, token: int, history: list[int], cache: KVCache) -> Tensor:
        """Feed one token after `history`; the next logits. A full cache slides: it is
        rebuilt from the last half of the context, then the token."""
        if cache.length < cache.capacity:
            return self._forward([token], cache)
        keep = history[-(self.context // 2):]
        cache.reset()
        return self._forward([*keep, token], cache)

    def stream(self, prompt_ids: list[int], settings: SampleSettings,
               routing: bool = False, generate: bool = True) -> Iterator[Token]:
        """The prompt's tokens, then up to `settings.max_new_tokens` new ones, as made.
        `generate=False` only feeds the given tokens (the `route` command); then the
        prompt may be longer than the context (it is fed through the sliding window)."""
        if generate:
            self.check_prompt(prompt_ids)
        elif not prompt_ids:
            raise SampleError("the text is empty; give at least one character")
        was_training = self.model.training
        self.model.eval()
        capture = RoutingCapture(self.model) if routing and self.moe_layers else None
        generator = torch.Generator().manual_seed(settings.seed)
        cache = KVCache(len(self.model.blocks), self.context)
        decoder = self.tokenizer.stream()
        last = len(prompt_ids) - 1 if not generate else -1

        def text(i: int, token: int) -> str:
            # the very last token also flushes a character left incomplete
            return decoder.feed(token) + (decoder.flush() if i == last else "")

        try:
            head = prompt_ids[:self.context]
            logits_V = self._forward(head, cache)
            routes = capture.take() if capture else [{}] * len(head)
            for i, (token, route) in enumerate(zip(head, routes, strict=True)):
                yield Token(token, text(i, token), True, route)
            history = list(head)
            for i, token in enumerate(prompt_ids[len(head):], start=len(head)):
                logits_V = self._feed(token, history, cache)
                history.append(token)
                yield Token(token, text(i, token), True,
                            capture.take(last=1)[0] if capture else {})
            if not generate:
                return
            last = len(prompt_ids) + settings.max_new_tokens - 1
            for i in range(len(prompt_ids), last + 1):
                token = next_token(logits_V, settings, generator)
                # feed it back now: its routing is known, and the next logits are ready
                # (the last token is fed only to learn its routing)
                if i < last or capture:
                    logits_V = self._feed(token, history, cache)
                history.append(token)
                yield Token(token, text(i, token), False,
                            capture.take(last=1)[0] if capture else {})
        finally:
            if capture:
                capture.remove()
            self.model.train(was_training)

    def complete(self, prompt: str | bytes, settings: SampleSettings) -> str:
        """The generated text alone (no streaming, no routing)."""
        ids = self.tokenizer.encode(prompt)
        return "".join(t.text for t in self.stream(ids, settings) if not t.prompt)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SampleError("--device cuda: torch sees no CUDA device here; use cpu or auto")
    if name not in ("cpu", "cuda"):
        raise SampleError(f"--device: got {name!r}; allowed values: auto, cpu, cuda")
    return torch.device(name)


def load_sampler(path: Path, device: str = "auto") -> Sampler:
    """A `Sampler` from a checkpoint file (verified against its sidecar checksum)."""
    try:
        state = load_checkpoint(Path(path))
    except CheckpointError as exc:
        raise SampleError(str(exc)) from None
    kind = state.get("kind")
    if kind not in LM_KINDS:
        raise SampleError(f"checkpoint {path} is a {kind!r} run; sampling needs a language "
                          "model (dense or topk)")
    from moedesk.train.loop import build_model  # the loop imports this module

    profile = profile_from_dict(state["config"])
    # checkpoints live in RUN_DIR/checkpoints/: the run folder holds the tokenizer copy
    try:
        tokenizer = tokenizer_for(state["config"], Path(path).resolve().parent.parent)
    except SAMPLE_ERRORS as exc:
        raise SampleError(str(exc)) from None
    named = (state.get("tokenizer") or {}).get("sha256")
    if named and getattr(tokenizer, "sha256", named) != named:
        raise SampleError(f"checkpoint {path} was trained with tokenizer sha256 {named[:12]}..., "
                          f"but {getattr(tokenizer, 'path', 'the run')} is another one")
    model = build_model(profile)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise SampleError(f"checkpoint {path} does not fit its own config: {exc}") from None
    target = resolve_device(device)
    return Sampler(model.to(target).eval(), tokenizer, target, profile, int(state["step"]))


# ---- samples during training -------------------------------------------------------------------
def sample_seed(run_seed: int, step: int, index: int) -> int:
    """The seed of prompt `index` at `step`: fixed by the run, so a resumed run repeats it."""
    return (run_seed * 1_000_003 + step * 1_009 + index) % 2**63


def default_prompts(profile: Profile, val_tokens: Tensor | None = None,
                    tokenizer: Tokenizer | None = None) -> list[bytes]:
    """`[train] sample_prompts`, or the first words of a line of the validation text
    (decoded with `tokenizer`; bytes when none is given)."""
    if profile.train.sample_prompts:
        return [p.encode("utf-8") for p in profile.train.sample_prompts]
    if val_tokens is None:
        from moedesk.train.data import DataError, LMData

        try:
            val_tokens = LMData(profile.data, profile.seed, 1, profile.model.vocab_size
                                ).splits["val"]
        except DataError as exc:
            raise SampleError(f"no default prompt ({exc}); give one with --prompt") from None
    head = val_tokens[:4096].tolist()
    text = tokenizer.decode_bytes(head) if tokenizer is not None else \
        bytes(min(max(t, 0), 255) for t in head)
    # a cut inside a multi-byte character would not encode: keep whole characters
    return [sentence_start(text).decode("utf-8", "ignore").encode("utf-8")]


class TrainingSampler:
    """The trainer's `[train] sample_every` continuations of `sample_prompts`."""

    def __init__(self, model: nn.Module, profile: Profile, val_tokens: Tensor,
                 device: torch.device, tokenizer: Tokenizer):
        tc = profile.train
        self.profile, self.every = profile, tc.sample_every
        self.sampler = Sampler(model, tokenizer, device)
        prompts = default_prompts(profile, val_tokens, tokenizer)
        # a default prompt longer than a short context keeps its end
        self.prompts = [(p.decode("utf-8", "replace"),
                         tokenizer.encode(p, "a sample prompt")[-self.sampler.context:])
                        for p in prompts]

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def run(self, step: int, emitter) -> None:
        tc = self.profile.train
        for index, (prompt, ids) in enumerate(self.prompts):
            seed = sample_seed(self.profile.seed, step, index)
            settings = SampleSettings(max_new_tokens=tc.sample_tokens,
                                      temperature=tc.sample_temperature, seed=seed)
            start = time.perf_counter()
            text = "".join(t.text for t in self.sampler.stream(ids, settings) if not t.prompt)
            emitter.emit("sample", step=step, prompt=prompt, text=text,
                         temperature=settings.temperature, seed=seed,
                         max_new_tokens=settings.max_new_tokens,
                         seconds=time.perf_counter() - start)
            emitter.log(f"Sample - step {step} | {prompt!r} -> {text!r}")
