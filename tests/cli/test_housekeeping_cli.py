"""The housekeeping commands and `logs`, `show`, `runs` through the real CLI (in process)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from moedesk.cli import app
from moedesk.store import open_reader
from tests.unit.test_housekeeping import make_run

runner = CliRunner()


def cli(home, *args, input=None):
    return runner.invoke(app, [*args, "--home", str(home)], input=input)


def test_rm_asks_and_removes_or_keeps(home, monkeypatch):
    run_id = make_run(home)
    monkeypatch.setattr("moedesk.cli.housekeeping.can_ask", lambda: True)
    kept = cli(home, "rm", str(run_id), input="n\n")
    assert kept.exit_code == 0 and "nothing removed" in kept.output
    assert (home / str(run_id)).exists()
    gone = cli(home, "rm", f"t-{run_id}", input="y\n")
    assert gone.exit_code == 0, gone.output
    assert f"remove run {run_id} (t-{run_id}): dense, completed at step 5/1000" in gone.output
    assert f"removed run {run_id}" in gone.output and not (home / str(run_id)).exists()


@pytest.mark.slow
def test_rm_without_a_terminal_needs_yes_and_refuses_a_running_run(home):
    done, live = make_run(home), make_run(home, status="running")
    refused = cli(home, "rm", str(done))
    assert refused.exit_code == 2 and "pass --yes" in refused.output
    busy = cli(home, "rm", str(done), str(live), "--yes")
    assert busy.exit_code == 2 and f"run {live} (t-{live}) is running: stop it first" in busy.output
    assert (home / str(done)).exists()
    assert cli(home, "rm", str(done), "-y").exit_code == 0 and not (home / str(done)).exists()
    missing = cli(home, "show", str(done))
    assert missing.exit_code == 2 and "was removed on" in missing.output


@pytest.mark.slow
def test_prune_dry_run_then_for_real(home):
    failed = [make_run(home, status="failed") for _ in range(3)]
    make_run(home, status="completed")
    dry = cli(home, "prune", "--status", "failed,crashed", "--keep-last", "1", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "2 runs would be removed (dry run: nothing changed)" in dry.output
    assert all((home / str(i)).exists() for i in failed)
    done = cli(home, "prune", "--status", "failed", "--keep-last", "1", "--yes")
    assert done.exit_code == 0 and "removed 2 runs" in done.output
    with open_reader(home) as reader:
        assert [r.status for r in reader.runs()] == ["failed", "completed"]
    for args, message in ((["--status", "running"], "--status: got 'running'"),
                          (["--older-than", "soon"], "--older-than: got 'soon'"),
                          ([], "say what to prune")):
        bad = cli(home, "prune", *args)
        assert bad.exit_code == 2 and message in bad.output, (args, bad.output)
    assert "no runs to prune" in cli(home, "prune", "--older-than", "30d").output


@pytest.mark.slow
def test_tag_note_rename_show_up_in_runs_and_show(home):
    first, second = make_run(home), make_run(home)
    assert "tags: lab sweep" in cli(home, "tag", str(first), "sweep", "lab").output
    cli(home, "tag", str(second), "lab")
    assert "tags: sweep" in cli(home, "untag", str(first), "lab").output
    assert cli(home, "note", str(first), "lr", "3e-3,", "best", "so", "far").exit_code == 0
    assert "-> baseline" in cli(home, "rename", str(first), "baseline").output
    listed = cli(home, "runs", "--tag", "lab")
    assert listed.exit_code == 0 and f"t-{second}" in listed.output
    assert "baseline" not in listed.output
    both = json.loads(cli(home, "runs", "--json", "--filter", "tag:lab,sweep").output)
    assert [(r["name"], r["tags"]) for r in both] == [("baseline", ["sweep"]),
                                                      (f"t-{second}", ["lab"])]
    assert both[0]["note"] == "lr 3e-3, best so far"
    shown = cli(home, "show", "baseline").output
    assert "note: lr 3e-3, best so far" in shown and "tags: sweep" in shown
    assert "final train loss 2.5" in shown  # the tail mean of 2.9 ... 2.5 over 5 steps
    bad = cli(home, "runs", "--filter", "colour:red")
    assert bad.exit_code == 2 and "unknown key 'colour'" in bad.output
    for args, message in ((["rename", str(second), "baseline"], "is taken by run 1"),
                          (["rename", str(second), "42"], "is a number"),
                          (["tag", str(second), "a b"], "a tag is 1-64"),
                          (["note", str(second)], "give the note's text, or --clear")):
        result = cli(home, *args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert "note cleared" in cli(home, "note", str(first), "--clear").output


@pytest.mark.slow
def test_show_without_a_run_shows_the_newest_and_prints_dates(home):
    make_run(home)
    newest = make_run(home, name="newest")
    shown = cli(home, "show")
    assert shown.exit_code == 0 and f"run {newest} newest" in shown.output
    assert "created: 20" in shown.output  # a date, not a Unix float
    empty = runner.invoke(app, ["show", "--home", str(home / "nowhere")])
    assert empty.exit_code == 2 and "no moedesk database" in empty.output


@pytest.mark.slow
def test_logs_prints_the_train_log_or_its_tail(home):
    run_id = make_run(home)
    (home / str(run_id) / "train.log").write_text("".join(f"line {i} [/b]\n" for i in range(50)))
    every = cli(home, "logs", str(run_id))
    assert every.exit_code == 0 and every.output.splitlines()[0] == "line 0 [/b]"
    tail = cli(home, "logs", str(run_id), "-n", "2")
    assert tail.output.splitlines() == ["line 48 [/b]", "line 49 [/b]"]
    (home / str(run_id) / "train.log").unlink()
    none = cli(home, "logs", str(run_id))
    assert none.exit_code == 2 and "has no log yet" in none.output


@pytest.mark.slow
def test_logs_follow_returns_when_the_run_has_ended(home):
    run_id = make_run(home, status="failed")
    followed = cli(home, "logs", str(run_id), "-f")
    assert followed.exit_code == 1 and "Step 5" in followed.output  # failed -> exit 1


@pytest.mark.slow
def test_a_run_named_like_markup_never_breaks_a_command(home):
    """Issue 12 item 10 / issue 11 item 3: `[/]` as a run name, and markup in data."""
    run_id = make_run(home, name="[/]")
    cli(home, "note", "[/]", "[bold]not bold[/]")
    (home / str(run_id) / "train.log").write_text("[red]log line[/red]\n")
    for args, want in ((["runs"], "[/]"), (["show", "[/]"], "run 1 [/]"),
                       (["show"], "[bold]not bold[/]"), (["alerts", "[/]"], "loss_spike"),
                       (["logs", "[/]"], "[red]log line[/red]"),
                       (["tag", "[/]", "lab"], "run 1 ([/]) tags: lab"),
                       (["query", "SELECT name FROM runs"], "[/]"),
                       (["rename", "[/]", "[b]x[/b]"], "run 1: [/] -> [b]x[/b]"),
                       (["rm", "[b]x[/b]", "--yes"], "removed run 1 ([b]x[/b], completed)")):
        result = cli(home, *args)
        assert result.exit_code == 0, (args, result.output)
        assert want in result.output, (args, result.output)
        assert "Traceback" not in result.output and "MarkupError" not in result.output
