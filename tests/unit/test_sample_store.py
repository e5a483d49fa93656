"""The supervisor's side of samples and keep-best: `sample` and `checkpoint` events through the
real Ingestor into a real store, the best mark moving, and resume truncation."""

from __future__ import annotations

import json

from moedesk.profiles import profile_to_dict, validate_data
from moedesk.runner.commit import Committer
from moedesk.runner.ingest import Ingestor
from moedesk.runner.protocol import decode, encode
from moedesk.store import Reader, connect_writer
from moedesk.store import runs as store_runs


def test_samples_and_the_best_mark_are_stored_and_truncated_on_resume(home):
    db = connect_writer(home / "moedesk.db")
    config = profile_to_dict(validate_data({"name": "t", "kind": "dense", "seed": 1}))
    run_id = store_runs.create_run(db.conn, config=config, profile_path="p.toml",
                                   home=home).run_id
    ingestor = Ingestor(Committer(db.conn, run_id, home / str(run_id), keep=0))
    lines = [
        {"type": "checkpoint", "step": 10, "path": "a.pt", "size": 1, "sha256": "x",
         "best_step": 10, "metric": "val/loss", "score": 2.0},
        {"type": "sample", "step": 10, "prompt": "The", "text": " cat\nsat", "temperature": 0.8,
         "seed": 2**63 - 1, "max_new_tokens": 8, "seconds": 0.1},
        {"type": "checkpoint", "step": 20, "path": "b.pt", "size": 1, "sha256": "y",
         "best_step": 20, "metric": "val/loss", "score": 1.5},
        {"type": "checkpoint", "step": 30, "path": "c.pt", "size": 1, "sha256": "z",
         "best_step": 20, "metric": "val/loss", "score": None},
        {"type": "sample", "step": 30, "prompt": "The", "text": " dog", "temperature": 0.8,
         "seed": 5, "max_new_tokens": 8, "seconds": 0.1},
    ]
    for event in lines:
        decoded = decode(encode(event))
        assert decoded.event is not None and decoded.event["type"] == event["type"]
        ingestor.feed_line(encode(event))
    ingestor.commit()
    with Reader(home / "moedesk.db") as reader:
        best = reader.best_checkpoint(run_id)
        assert (best["step"], best["metric"], best["score"]) == (20, "val/loss", 1.5)
        assert [(c["step"], c["best"], c["score"]) for c in reader.checkpoints(run_id)] == \
            [(10, 0, 2.0), (20, 1, 1.5), (30, 0, None)]
        samples = reader.samples(run_id)
        assert [(s["step"], s["text"], s["seed"]) for s in samples] == \
            [(30, " dog", 5), (10, " cat\nsat", 2**63 - 1)]
        assert reader.samples(run_id, after_rowid=samples[0]["rowid"]) == []
    store_runs.truncate_for_resume(db.conn, run_id, 20, "b.pt")
    with Reader(home / "moedesk.db") as reader:
        assert [s["step"] for s in reader.samples(run_id)] == [10]
        assert reader.best_checkpoint(run_id)["step"] == 20
        rows = reader.query("SELECT json_object('n', COUNT(*)) FROM checkpoints")[1]
        assert json.loads(rows[0][0]) == {"n": 2}
    db.close()
