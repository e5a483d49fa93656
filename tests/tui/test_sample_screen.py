"""The sample view (`w` in a dense or topk monitor): streaming in a worker, routing colours,
the checkpoint choice, the trainer's samples, and what the CLI writes for the same seed.

Generation runs in the real sample server (a child process with torch); the runs are
checkpoints of freshly initialised tiny models written in-process (no training), and
one real topk run trains beside the view.
"""

from __future__ import annotations

import json

import psutil
import pytest
from typer.testing import CliRunner

from moedesk.cli import app as cli
from moedesk.paths import db_path
from moedesk.runner.checkpoints import list_checkpoints
from moedesk.store import Reader, connect_writer
from moedesk.store.ingest import Batch, write_batch
from moedesk.tui.format import terminal_safe
from moedesk.tui.palette import EXPERT_COLOURS
from moedesk.tui.screens.monitor import MonitorScreen
from moedesk.tui.screens.sample import SampleScreen
from moedesk.tui.widgets.token_stream import TokenStream
from tests.cli.test_sample_cli import make_run
from tests.conftest import PROFILES, moedesk, wait_for
from tests.tui.conftest import loaded, make_app, until
from tests.tui.realruns import kill_leftovers, status_of

pytestmark = pytest.mark.slow


@pytest.fixture
def runs(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    ids = {"topk": make_run(home, "tiny_topk", best=True), "dense": make_run(home, "tiny_dense"),
           "ternary": make_run(home, "tiny_ternary")}
    db = connect_writer(db_path(home))
    batch = Batch()
    batch.samples.append((20, "The old", " cat\x1b[2J sat\n", 0.8, 12345, 48, 1.0))
    write_batch(db.conn, ids["topk"], batch)
    db.close()
    return home, ids


async def open_sample(pilot, run_id: int) -> SampleScreen:
    await loaded(pilot)
    pilot.app.open_monitor(run_id)
    await until(pilot, lambda: isinstance(pilot.app.screen, MonitorScreen)
                and pilot.app.screen.caught_up, what="the monitor")
    await pilot.press("w")
    return await until(pilot, lambda: isinstance(pilot.app.screen, SampleScreen)
                       and pilot.app.screen.lists and pilot.app.screen, what="the sample view")


async def generate(pilot, screen: SampleScreen, prompt: str, tokens: int) -> None:
    screen.max_new_tokens = tokens
    asked = screen.request_id
    await pilot.click("#sample-prompt")
    screen.query_one("#sample-prompt").value = prompt
    await pilot.press("enter")
    # the request's id, not `busy`: a short continuation can be over before a poll sees it
    await until(pilot, lambda: screen.request_id > asked, timeout=60, what="the request")


async def test_a_prompt_streams_in_with_routing_and_equals_the_cli(runs):
    home, ids = runs
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_sample(pilot, ids["topk"])
        training = str(screen.query_one("#sample-training").render())
        # stored raw, drawn on one line with no raw control character
        assert "step 20" in training and "The old" in training and "cat·[2J sat↵" in training
        options = [value for _, value in screen._options]
        assert options == ["latest", "best", "20", "10"]
        await generate(pilot, screen, "The cat", 24)
        stream = screen.query_one(TokenStream)
        await until(pilot, lambda: not screen.busy, timeout=180, what="the continuation")
        assert stream.generated == 24 and stream.plain().startswith("The cat")
        assert "done: 24 tokens" in str(screen.query_one("#sample-head").render())
        # the server runs below the trainer's priority
        assert screen.proc is not None and psutil.Process(screen.proc.pid).nice() == 10
        # the same seed and checkpoint from the CLI write the same text
        result = CliRunner().invoke(cli, ["sample", f"{ids['topk']}@20", "--prompt", "The cat",
                                          "--seed", "1", "--max-new-tokens", "24", "--json",
                                          "--home", str(home)])
        assert result.exit_code == 0, result.output
        # the stream keeps the model's raw text (what --json reports) and draws it safely
        assert stream.text() == "The cat" + json.loads(result.stdout)["text"]
        assert stream.plain() == terminal_safe(stream.text())
        assert not any(c < " " and c not in "\n\t" for c in stream.plain())
        # routing: every token coloured by its top expert in the layer shown
        await pilot.press("ctrl+r")
        assert stream.routing and stream.shown_layer == 0
        shown = stream.render()
        colours = {span.style.bgcolor.name for span in shown.spans
                   if getattr(span.style, "bgcolor", None)}
        assert colours and colours <= set(EXPERT_COLOURS)
        assert shown.plain.startswith("L0 top expert per token")
        assert all(set(t.top) == {0, 1} for t in stream.tokens)
        await pilot.press("ctrl+n")
        assert stream.shown_layer == 1 and stream.render().plain.startswith("L1 ")


async def test_the_view_stays_live_while_generating_and_escape_stops_it(runs):
    home, ids = runs
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_sample(pilot, ids["topk"])
        await pilot.click("#sample-checkpoint")
        await pilot.press("escape")
        screen.query_one("#sample-checkpoint").value = "best"
        await generate(pilot, screen, "a", 5000)
        stream = screen.query_one(TokenStream)
        await until(pilot, lambda: stream.generated >= 5, timeout=180, what="the first tokens")
        # keys are handled while tokens keep arriving: the UI thread is never blocked
        await pilot.press("ctrl+r")
        assert stream.routing and screen.busy
        seen = stream.generated
        await until(pilot, lambda: stream.generated > seen, timeout=30, what="more tokens")
        await pilot.press("escape")
        await until(pilot, lambda: not screen.busy, timeout=30, what="the stop")
        head = str(screen.query_one("#sample-head").render())
        assert head.startswith("stopped:") and stream.generated < 5000
        assert screen.loaded["step"] == 10  # the best checkpoint, not the newest
        await pilot.press("escape")
        assert isinstance(app.screen, MonitorScreen)
        await until(pilot, lambda: screen.proc is None, what="the server to be closed")


async def test_dense_runs_sample_and_ternary_runs_have_no_sample_view(runs):
    home, ids = runs
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_sample(pilot, ids["dense"])
        await generate(pilot, screen, "Hi", 8)
        await until(pilot, lambda: not screen.busy, timeout=180, what="the continuation")
        assert screen.query_one(TokenStream).generated == 8
        await pilot.press("ctrl+r")
        assert not screen.query_one(TokenStream).routing
        # "latest" named a checkpoint a training run pruned before the server read it:
        # the view asks again with the newest one instead of failing
        screen.request_id += 1
        screen.query_one(TokenStream).clear()
        screen.busy = True
        gone = home / str(ids["dense"]) / "checkpoints" / "step_00000005.pt"
        screen._request = {**screen._request, "id": screen.request_id, "checkpoint": str(gone),
                           "max_new_tokens": 4}
        screen._send(screen._request)
        await until(pilot, lambda: not screen.busy, timeout=180, what="the retried request")
        assert screen.loaded["step"] == 20 and screen.query_one(TokenStream).generated == 4
        assert str(screen.query_one("#sample-head").render()).startswith("done:")
        await pilot.press("escape")
        await pilot.press("escape")
        pilot.app.open_monitor(ids["ternary"])
        monitor = await until(pilot, lambda: isinstance(pilot.app.screen, MonitorScreen)
                              and pilot.app.screen.caught_up and pilot.app.screen,
                              what="the ternary monitor")
        await pilot.press("w")
        await pilot.pause()
        assert pilot.app.screen is monitor


async def test_the_view_samples_a_run_while_it_trains(tmp_path):
    """A real detached topk run (supervisor and trainer) keeps training while the view
    generates from its newest checkpoint; each prompt looks the newest one up again, and
    the monitor shows the trainer's newest sample."""
    home = tmp_path / "home"
    started = moedesk("run", str(PROFILES / "tiny_topk.toml"), "--set", "train.steps=100000",
                      "--set", "train.threads=1", "--set", "train.eval_every=0",
                      "--set", "checkpoint.every=20", "--set", "checkpoint.keep=20",
                      "--set", "train.sample_every=10", "--set", "train.sample_tokens=8",
                      "--detach", home=home)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        wait_for(lambda: list_checkpoints(home / "1"), timeout=180, what="a first checkpoint")
        app = make_app(home, fixed_clock=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            pilot.app.open_monitor(1)
            monitor = await until(pilot, lambda: isinstance(pilot.app.screen, MonitorScreen)
                                  and pilot.app.screen.caught_up and pilot.app.screen,
                                  timeout=60, what="the monitor")
            await until(pilot, lambda: "sample @ step" in str(
                monitor.query_one("#log-tail").border_subtitle or ""), timeout=120,
                what="the newest training sample on the monitor")
            await pilot.press("w")
            screen = await until(pilot, lambda: isinstance(pilot.app.screen, SampleScreen)
                                 and pilot.app.screen.lists and pilot.app.screen,
                                 what="the sample view")
            steps = []
            for _ in range(2):
                await generate(pilot, screen, "The", 16)
                await until(pilot, lambda: not screen.busy, timeout=180,
                            what="the continuation")
                assert screen.query_one(TokenStream).generated == 16
                steps.append(screen.loaded["step"])
                newest = list_checkpoints(home / "1")[-1].step
                await until(pilot, lambda newest=newest: list_checkpoints(home / "1")[-1].step > newest,
                            timeout=180, what="a newer checkpoint")
            assert steps[1] > steps[0]  # "latest" followed the training run
            assert status_of(home, 1) == "running"
            with Reader(db_path(home)) as reader:
                assert reader.samples(1, limit=1)  # the trainer kept writing samples
    finally:
        moedesk("stop", "1", "--kill", home=home)
        kill_leftovers(home)
