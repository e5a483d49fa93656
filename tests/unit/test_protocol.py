"""The trainer -> supervisor event protocol: encode/decode, NaN, junk lines."""

from __future__ import annotations

import io
import json
import math

from moedesk.runner.protocol import decode, encode
from moedesk.train.emit import Emitter


def test_metrics_round_trip_including_non_finite():
    line = encode({"type": "metrics", "step": 3, "values": {"a": 1.5, "b": math.nan,
                                                          "c": math.inf, "d": -math.inf}})
    assert "NaN" not in line  # strict JSON
    json.loads(line)
    event = decode(line + "\n").event
    assert event["step"] == 3 and event["values"]["a"] == 1.5
    assert math.isnan(event["values"]["b"])
    assert event["values"]["c"] == math.inf and event["values"]["d"] == -math.inf


def test_non_event_lines_are_text_not_errors():
    for junk in ["hello", "{not json", '{"type": "bogus"}', "[1, 2]", '{"type": "metrics"}', ""]:
        decoded = decode(junk)
        assert decoded.event is None and decoded.text == junk


def test_bad_metric_values_are_dropped_not_fatal():
    event = decode('{"type":"metrics","step":1,"values":{"ok":2,"bad":"x","worse":null}}').event
    assert event["values"] == {"ok": 2.0}


def test_emitter_writes_one_flushed_line_per_event():
    out = io.StringIO()
    emitter = Emitter(out, io.StringIO())
    emitter.metrics(1, {"train/loss": 2.0})
    emitter.expert_load(1, {0: [1, 2, 3]})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert decode(lines[1]).event["loads"] == {"0": [1, 2, 3]}
