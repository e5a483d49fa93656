"""The trainer -> supervisor event protocol: one JSON object per line on stdout.

Event types (every event has "type"; "step" where it applies):
  started      {step, total_steps, pid, device, params: {total, active}, resumed_from?}
  metrics      {step, wall, values: {name: float}}        non-finite values travel as strings
               or packed: {step, wall, names: [name, ...], f64: base64 of the values as
               little-endian float64, in the names' order} (MetricsPacker; decode gives
               both forms as `values`)
  expert_load  {step, wall, loads: {layer: [count, ...]}}  one vector per MoE layer
  checkpoint   {step, wall, path, size, sha256, best_step?, metric?, score?}
               with [checkpoint] keep_best: the step now marked best, the keep_best metric
               and this checkpoint's value of it (null when not measured at its step)
  analysis     {step, wall, name, payload}                 e.g. routing histograms
  sample       {step, wall, prompt, text, temperature, seed, max_new_tokens, seconds}
               a continuation of a [train] sample_prompts prompt (text = the new part)
  finished     {step, wall, status, reason}                status: completed | stopped | failed
  alert        {step, wall, title, text, level}            a user's alert (moedesk.track),
               or the trainer's own with {rule, action}: its rule name in the alerts table
               and the suggested action (e.g. "bf16_emulated", speed.py)
External runs (docs/tracking.md) write the same events to RUN_DIR/events.jsonl; their
`started` adds {config, name, tags, stop_on, health, moe, graceful_stop, program} and
their `expert_load` may carry `top_k`; `finished` may carry `exit_code`.
Anything on stdout that is not a JSON object is kept as a log line, never an error.
Pure stdlib: both sides (train, runner) import it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

EVENT_TYPES = ("started", "metrics", "expert_load", "checkpoint", "analysis", "sample",
               "finished", "alert")
FINISH_STATUSES = ("completed", "stopped", "failed")
# the rule of a trainer's `alert` event that names none
TRAINER_ALERT_RULE = "trainer"


def _encode_float(value: float) -> float | str:
    # JSON has no NaN/Inf; strings keep them lossless ("nan", "inf", "-inf")
    return value if math.isfinite(value) else repr(float(value))


def encode(event: dict[str, Any]) -> str:
    """One event as a single line of JSON (no trailing newline)."""
    if event.get("type") == "metrics":
        event = dict(event)
        event["values"] = {k: _encode_float(float(v)) for k, v in event["values"].items()}
    return json.dumps(event, separators=(",", ":"), allow_nan=False)


class MetricsPacker:
    """Packed metrics lines for one set of names (moedesk.track's `log`): the values go as
    raw float64 bytes in base64, which is about ten times cheaper for the caller than
    formatting each as decimal text, and keeps NaN and inf exactly as they are."""

    def __init__(self, names: tuple[str, ...]):
        self._pack = struct.Struct(f"<{len(names)}d").pack
        self._names_json = json.dumps(list(names), separators=(",", ":"))

    def line(self, step: int, wall: float, values: list[float]) -> str:
        packed = base64.b64encode(self._pack(*values)).decode("ascii")
        return (f'{{"type":"metrics","step":{step},"wall":{wall!r},'
                f'"names":{self._names_json},"f64":"{packed}"}}')


def _unpacked(event: dict[str, Any]) -> dict[str, float] | None:
    names, packed = event.pop("names", None), event.pop("f64")
    if not isinstance(names, list) or not isinstance(packed, str):
        return None
    if names and set(map(type, names)) != {str}:
        return None
    try:
        raw = binascii.a2b_base64(packed, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 8 * len(names):
        return None
    return dict(zip(names, struct.unpack(f"<{len(names)}d", raw), strict=True))


@dataclass
class Decoded:
    event: dict[str, Any] | None  # None when the line was not an event
    text: str  # the raw line, for the log when it is not an event


def decode(line: str) -> Decoded:
    """Parse one stdout line; malformed lines come back as text, never raise."""
    text = line.rstrip("\n")
    if not text.startswith("{"):
        return Decoded(None, text)
    try:
        event = json.loads(text)
    except ValueError:
        return Decoded(None, text)
    if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
        return Decoded(None, text)
    if event["type"] == "metrics":
        if "f64" in event:
            values = _unpacked(event)
            if values is None:
                return Decoded(None, text)
            event["values"] = values
            return Decoded(event, text)
        values = event.get("values")
        if not isinstance(values, dict):
            return Decoded(None, text)
        clean = {}
        for name, value in values.items():
            try:
                clean[str(name)] = float(value)  # float("nan") / float("inf") round-trip
            except (TypeError, ValueError):
                continue
        event["values"] = clean
    return Decoded(event, text)


# The supervisor -> trainer thread count for `train.threads = 0` (runner/threads.py decides
# it, train/speed.py reads it): an environment variable, so the trainer never reads the store.
THREADS_ENV = "MOEDESK_THREADS"
