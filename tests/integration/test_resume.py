"""Exact resume through the real CLI: stop at 20, resume, and match an uninterrupted run.

For each kind: every deterministic metric (loss, balancing statistics, goodness, ...) at
steps 21..40 is bit-identical to a 40-step run that was never interrupted, there is
exactly one row per (name, step), the `resumes` table records the resume, and a fork
(`moedesk run P --from RUN@STEP`) records its parent and continues identically too.
"""

from __future__ import annotations

import pytest

from moedesk.store import Reader
from tests.conftest import PROFILES, moedesk, wait_for

pytestmark = pytest.mark.slow  # every test here starts real processes

KIND_PROFILES = [p for p in ("tiny_dense", "tiny_topk", "tiny_ternary")
                 if (PROFILES / f"{p}.toml").exists()]
COMMON = ["--set", "train.steps=40", "--set", "train.threads=1", "--set", "checkpoint.keep=0"]


def timing(name: str) -> bool:
    """Metrics that measure the machine, not the model: they differ run to run."""
    return (name.startswith(("sys/", "route/")) or name.endswith("tokens_per_s")
            or name.endswith("_per_s"))


def model_metrics(reader: Reader, run_id: int, steps: range) -> dict[tuple[str, int], float]:
    rows = reader.conn.execute("SELECT name, step, value FROM metrics WHERE run_id = ?"
                               " AND step BETWEEN ? AND ?", (run_id, steps.start, steps.stop - 1))
    return {(r[0], r[1]): r[2] for r in rows if not timing(r[0])}


def duplicate_rows(reader: Reader, run_id: int) -> list:
    return reader.conn.execute("SELECT name, step, COUNT(*) FROM metrics WHERE run_id = ?"
                               " GROUP BY name, step HAVING COUNT(*) > 1", (run_id,)).fetchall()


@pytest.mark.parametrize("profile", KIND_PROFILES)
def test_stop_resume_matches_an_uninterrupted_run_bit_for_bit(home, profile):
    path = f"profiles/{profile}.toml"
    # the uninterrupted run (2) trains beside the interrupted one (1): two cores, two runs
    first = moedesk("run", path, *COMMON, "--stop-at", "20", "--detach", home=home, check=True)
    assert "started run 1" in first.stdout
    moedesk("run", path, *COMMON, "--detach", home=home, check=True)
    wait_for(lambda: Reader(home / "moedesk.db").run(1).status == "stopped", timeout=240,
             what="run 1 to stop at 20")
    assert Reader(home / "moedesk.db").run(1).last_step == 20
    fork = moedesk("run", path, *COMMON, "--from", "1@20", "--detach", home=home, check=True)
    assert "started run 3" in fork.stdout
    resumed = moedesk("resume", "1", home=home)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "from step 20" in resumed.stdout
    wait_for(lambda: all(r.status not in ("queued", "running")
                         for r in Reader(home / "moedesk.db").runs()), timeout=240,
             what="runs 2 and 3 to end")

    reader = Reader(home / "moedesk.db")
    run, uninterrupted, forked = reader.run(1), reader.run(2), reader.run(3)
    assert run.status == uninterrupted.status == forked.status == "completed"
    expected = model_metrics(reader, 2, range(21, 41))
    per_step = {name for name, step in expected if step == 21}
    main_metric = "train/loss" if run.kind != "ternary" else "ff/goodness_delta"
    assert main_metric in per_step
    assert {s for (n, s) in expected if n == main_metric} == set(range(21, 41))
    # bit-identical: floats round-trip exactly through JSON and SQLite REAL
    assert model_metrics(reader, 1, range(21, 41)) == expected
    assert model_metrics(reader, 3, range(21, 41)) == expected
    # the resumed run's curve has no overlap: one row per (name, step), every step once
    assert duplicate_rows(reader, 1) == []
    assert [s for s, _ in reader.series(1, main_metric)] == list(range(1, 41))
    loads = "SELECT step, layer, counts FROM expert_load WHERE run_id = ? AND step > 20"
    assert (reader.conn.execute(loads, (1,)).fetchall()
            == reader.conn.execute(loads, (2,)).fetchall())
    # the resume is on record, and so is the fork's parent
    (resume,) = reader.resumes(1)
    assert resume["from_step"] == 20 and resume["checkpoint"].endswith("step_00000020.pt")
    assert run.row["resumed_from_step"] == 20
    assert forked.row["parent_id"] == 1 and forked.row["parent_step"] == 20
    assert reader.series(3, main_metric)[0][0] == 21


def test_resuming_a_completed_run_from_an_older_checkpoint_drops_the_later_rows(home):
    moedesk("run", "profiles/tiny_dense.toml", *COMMON, "--set", "checkpoint.every=10",
            "--set", "checkpoint.keep=0", home=home, check=True)
    reader = Reader(home / "moedesk.db")
    before = reader.series(1, "train/loss")
    resumed = moedesk("resume", "1", "--at", "10", "--steps", "30", home=home)
    assert resumed.returncode == 4, resumed.stdout + resumed.stderr  # stopped at 30
    after = Reader(home / "moedesk.db").series(1, "train/loss")
    assert after == before[:30]  # 11..30 logged again, identical; 31..40 gone
    assert duplicate_rows(reader, 1) == []
    assert [c["step"] for c in reader.checkpoints(1)] == [10, 20, 30]


def test_alerts_after_a_resume_match_the_uninterrupted_run(home):
    """An alert open at the checkpoint is neither fired again nor left dangling: the
    resumed supervisor replays the stored history into its health engine."""
    path = "profiles/topk_collapse.toml"
    common = ["--set", "train.steps=40", "--set", "train.threads=1", "--stop-on", "never"]
    moedesk("run", path, *common, "--detach", home=home, check=True)
    first = moedesk("run", path, *common, "--stop-at", "30", home=home)
    assert first.returncode == 4, first.stdout + first.stderr
    resumed = moedesk("resume", "2", home=home)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    wait_for(lambda: Reader(home / "moedesk.db").run(1).status == "completed", timeout=120,
             what="the uninterrupted run")
    reader = Reader(home / "moedesk.db")

    def alerts(run_id):
        return [(a["step"], a["rule"], a["severity"], a["cleared_step"])
                for a in reader.alerts(run_id)]

    assert ("routing_collapse" in {a[1] for a in alerts(1)})
    assert [a for a in alerts(2) if a[0] <= 30 and a[3] is None]  # open across the resume
    assert alerts(2) == alerts(1)
