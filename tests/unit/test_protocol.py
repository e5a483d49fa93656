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


def test_a_log_that_cannot_be_written_loses_lines_not_the_run():
    """The trainer's stderr is train.log on the run's disk: a full disk used to raise out
    of `Emitter.log` and end the trainer with exit code 1 (and no traceback to show)."""
    out = io.StringIO()
    with open("/dev/full", "w") as full:  # every write fails with ENOSPC, as on a full disk
        emitter = Emitter(stream=out, log_stream=full)
        emitter.log("Step 10/100 | LM Loss: 2.5")
        emitter.log("Step 20/100 | LM Loss: 2.4")
        emitter.metrics(20, {"train/loss": 2.4})  # events still go out
        assert emitter.lost_lines == 2
        log = io.StringIO()
        emitter.log_stream = log  # the disk has room again
        emitter.log("Step 30/100 | LM Loss: 2.3")
    lines = log.getvalue().splitlines()
    assert lines[0].endswith("(2 log lines lost: the log could not be written)")
    assert lines[1].endswith("Step 30/100 | LM Loss: 2.3") and len(lines) == 2
    assert emitter.lost_lines == 0
    assert json.loads(out.getvalue())["values"] == {"train/loss": 2.4}
