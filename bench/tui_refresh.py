"""How fast the TUI applies live data, measured side by side in one run.

1. The 243-expert heatmap applying one update (set the grid, render every line), against
   the same grid as a Static with Rich text and as a DataTable. Target: <= 8 ms.
2. The whole run monitor applying one logged step (charts, heatmap, timeline, gauges,
   stats) and recompositing the full screen, at 80x24 and 120x40. Target: <= 40 ms.
   Also one poll tick (the thread's SQL reads for that step).
3. The app in a real terminal (tmux, 120x40) watching one live 243-expert run that logs
   10 steps a second: CPU use of the TUI process (target < 10% of one core) and the time
   from a commit to its step number on screen.

    .venv/bin/python bench/tui_refresh.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from rich.text import Text
from textual.app import App, ComposeResult
from textual.geometry import Region
from textual.widgets import DataTable, Static

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from moedesk.paths import db_path  # noqa: E402
from moedesk.profiles import profile_to_dict, validate_data  # noqa: E402
from moedesk.store import connect_writer  # noqa: E402
from moedesk.store import runs as store_runs  # noqa: E402
from moedesk.store.ingest import Batch, write_batch  # noqa: E402
from moedesk.tui import palette  # noqa: E402
from moedesk.tui.app import MoedeskApp  # noqa: E402
from moedesk.tui.poller import Poller  # noqa: E402
from moedesk.tui.screens.monitor import MonitorScreen  # noqa: E402
from moedesk.tui.widgets import line_chart  # noqa: E402
from moedesk.tui.widgets.expert_heatmap import ExpertHeatmap  # noqa: E402

EXPERTS, CLUSTER = 243, 16


def ms(values: list[float]) -> str:
    values = sorted(values)
    return (f"median {statistics.median(values) * 1e3:6.2f} ms   "
            f"p90 {values[int(0.9 * (len(values) - 1))] * 1e3:6.2f} ms")


def random_ratios() -> list[float]:
    counts = [random.choice((0, 1, 2, 3, 5, 8, 13)) for _ in range(EXPERTS)]
    mean = sum(counts) / EXPERTS
    return [c / mean for c in counts]


def rows_of(ratios: list[float]) -> list[list[float]]:
    return [ratios[i:i + CLUSTER] for i in range(0, EXPERTS, CLUSTER)]


# 1. the heatmap against a Static and a DataTable ------------------------------------

class HeatmapHarness(App):
    CSS = "#heat, #static, #table { width: 44; height: auto; max-height: 20; }"

    def compose(self) -> ComposeResult:
        yield ExpertHeatmap(id="heat")
        yield Static(id="static")
        yield DataTable(id="table", show_header=False, show_cursor=False)


def rich_grid(rows: list[list[float]]) -> Text:
    text = Text()
    for i, row in enumerate(rows):
        text.append(f"c{i:<3}")
        for ratio in row:
            text.append("  ", style=palette.background(palette.level(ratio)))
        text.append("\n")
    return text


async def bench_heatmap(updates: int) -> dict[str, list[float]]:
    app = HeatmapHarness()
    out: dict[str, list[float]] = {"ExpertHeatmap": [], "Static + Rich Text": [],
                                   "DataTable": []}
    async with app.run_test(size=(100, 60)) as pilot:
        heat, static = app.query_one(ExpertHeatmap), app.query_one(Static)
        table = app.query_one(DataTable)
        labels = [f"c{i}" for i in range(len(rows_of(random_ratios())))]
        for i in range(CLUSTER + 1):
            table.add_column(str(i), key=str(i))
        for i, row in enumerate(rows_of(random_ratios())):
            table.add_row(labels[i], *[""] * len(row), *[""] * (CLUSTER - len(row)), key=str(i))
        heat.set_grid(labels, rows_of(random_ratios()), "warm-up")
        static.update(rich_grid(rows_of(random_ratios())))
        await pilot.pause()
        for _ in range(updates):
            grid = rows_of(random_ratios())
            t0 = time.perf_counter()
            heat.set_grid(labels, grid, "243 experts")
            heat.render_lines(Region(0, 0, heat.size.width, heat.size.height))
            out["ExpertHeatmap"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            static.update(rich_grid(grid))
            static.render_lines(Region(0, 0, static.size.width, static.size.height))
            out["Static + Rich Text"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            for r, row in enumerate(grid):
                for c, ratio in enumerate(row):
                    table.update_cell(str(r), str(c + 1),
                                      Text("  ", style=palette.background(palette.level(ratio))))
            table.render_lines(Region(0, 0, table.size.width, table.size.height))
            out["DataTable"].append(time.perf_counter() - t0)
            await pilot.pause()
    return out


# 2. the whole monitor screen, and one poll tick ------------------------------------

def make_home(root: Path, steps: int) -> tuple[Path, int]:
    """A data home with one running ternary run holding `steps` logged steps."""
    home = root / "home"
    config = profile_to_dict(validate_data({"name": "bench", "kind": "ternary", "seed": 0,
                                            "ternary": {"topology": "hierarchical"},
                                            "train": {"steps": 1_000_000}}, "bench.toml"))
    db = connect_writer(db_path(home))
    run_id, _ = store_runs.create_run(db.conn, config=config, profile_path="bench.toml",
                                   home=home)
    me = psutil.Process()
    store_runs.set_supervisor(db.conn, run_id, me.pid, me.create_time())
    store_runs.mark_running(db.conn, run_id, me.pid)
    write_batch(db.conn, run_id, steps_batch(1, steps))
    db.close()
    (home / str(run_id)).mkdir(parents=True, exist_ok=True)
    (home / str(run_id) / "train.log").write_text("bench run\n")
    return home, run_id


def steps_batch(first: int, last: int) -> Batch:
    batch = Batch()
    now = time.time()
    for step in range(first, last + 1):
        counts = [random.randint(0, 40) for _ in range(EXPERTS)]
        batch.add_expert_load(step, {"0": counts}, now)
        batch.add_metrics(step, {"ff/goodness_delta": 0.5 + random.random() * 0.1,
                                 "ff/accuracy": 0.6 + random.random() * 0.1,
                                 "train/samples_per_s": 1500.0, "moe/imbalance": 0.3,
                                 "route/latency_us": 80 + random.random() * 40,
                                 "moe/dead_experts": 0.0, "moe/usage_std": 0.001,
                                 "sys/step_s": 0.1}, now)
    return batch


async def bench_monitor(home: Path, run_id: int, size: tuple[int, int],
                        updates: int) -> tuple[list[float], list[float]]:
    # every update rebuilds both charts here (the app spaces rebuilds 0.3 s apart)
    line_chart.MIN_BUILD_INTERVAL_S = 0.0
    app = MoedeskApp(home, poll_interval=3600)  # the benchmark feeds the screen itself
    applies, polls = [], []
    async with app.run_test(size=size) as pilot:
        while not app.refreshes:
            await pilot.pause(0.05)
        app.open_monitor(run_id)
        while not (isinstance(app.screen, MonitorScreen) and app.screen.caught_up):
            app.wake_poller()
            await pilot.pause(0.05)
        screen = app.screen
        await pilot.pause(0.2)
        poller = Poller(home)
        data = poller.watch(run_id)
        poller.poll()
        db = connect_writer(db_path(home))
        step = data.row.step
        for _ in range(updates):
            step += 1
            write_batch(db.conn, run_id, steps_batch(step, step))
            t0 = time.perf_counter()
            poller.poll()  # the worker thread's share: SQL reads of the new rows
            polls.append(time.perf_counter() - t0)
            # the UI thread's share: apply the same step to the screen, recomposite all
            live = screen.data
            with live.lock:
                live.add_metrics([(0, step, n, v) for n, v in
                                  (("ff/goodness_delta", 0.55), ("ff/accuracy", 0.65),
                                   ("route/latency_us", 90.0), ("moe/imbalance", 0.3))])
                live.add_expert_load([(step, 0, [random.randint(0, 40)
                                                 for _ in range(EXPERTS)])])
            t0 = time.perf_counter()
            screen.apply()
            screen._compositor.render_full_update()
            applies.append(time.perf_counter() - t0)
            await pilot.pause()
        db.close()
        poller.close()
    return applies, polls


# 3. a real terminal watching a live run ---------------------------------------------

def writer_loop(home: Path, run_id: int, first: int, rate: float, stop: threading.Event,
                commits: list[tuple[int, float]]) -> None:
    """Like a supervisor: one transaction every 0.2 s holding the steps made since."""
    db = connect_writer(db_path(home))
    step = first
    per_commit = max(1, int(rate * 0.2))
    while not stop.is_set():
        write_batch(db.conn, run_id, steps_batch(step + 1, step + per_commit))
        step += per_commit
        commits.append((step, time.monotonic()))
        stop.wait(0.2)
    db.close()


def bench_terminal(home: Path, run_id: int, seconds: float) -> dict:
    socket = f"moedesk-bench-{psutil.Process().pid}"

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-L", socket, *args], capture_output=True,
                              text=True).stdout

    cmd = (f"cd {REPO} && exec env -u COLUMNS -u LINES {sys.executable} -m moedesk.tui "
           f"--home {home}")
    tmux("new-session", "-d", "-s", "b", "-x", "120", "-y", "40", cmd)
    stop, commits = threading.Event(), []
    try:
        pid = int(tmux("display", "-p", "-t", "b", "#{pane_pid}").strip())
        proc = psutil.Process(pid)
        deadline = time.monotonic() + 30
        while "bench-" not in tmux("capture-pane", "-p", "-t", "b"):
            assert time.monotonic() < deadline, "the TUI did not start"
            time.sleep(0.2)
        tmux("send-keys", "-t", "b", "Enter")  # open the only run's monitor
        while "243 experts" not in tmux("capture-pane", "-p", "-t", "b"):
            assert time.monotonic() < deadline, "the monitor did not open"
            time.sleep(0.2)
        time.sleep(2)
        idle0, t_idle = proc.cpu_times(), time.monotonic()
        time.sleep(min(5.0, seconds / 2))
        idle1 = proc.cpu_times()
        idle_share = (idle1.user + idle1.system - idle0.user - idle0.system) / (
            time.monotonic() - t_idle)
        writer = threading.Thread(target=writer_loop, args=(home, run_id, 2000, 10.0, stop,
                                                            commits), daemon=True)
        writer.start()
        time.sleep(2)
        c0, t0 = proc.cpu_times(), time.monotonic()
        latencies = []
        while time.monotonic() - t0 < seconds:
            if commits:
                step, committed = commits[-1]
                while time.monotonic() - committed < 2.0:
                    screen = tmux("capture-pane", "-p", "-t", "b")
                    shown = re.search(r"16 per row · step (\d+)", screen)
                    if shown and int(shown.group(1)) >= step:
                        latencies.append(time.monotonic() - committed)
                        break
                    time.sleep(0.01)
            time.sleep(0.3)
        c1 = proc.cpu_times()
        busy = (c1.user + c1.system - c0.user - c0.system) / (time.monotonic() - t0)
        tmux("send-keys", "-t", "b", "q")
        return {"cpu": busy, "idle_cpu": idle_share, "latencies": latencies,
                "steps": commits[-1][0] - 2000 if commits else 0}
    finally:
        stop.set()
        tmux("kill-server")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--updates", type=int, default=150)
    args = parser.parse_args()
    random.seed(0)
    root = Path(tempfile.mkdtemp(prefix="moedesk-bench-"))
    try:
        print("1. heatmap of 243 experts, one update (set + render every line):")
        results = asyncio.run(bench_heatmap(args.updates))
        base = statistics.median(results["ExpertHeatmap"])
        for name, values in results.items():
            ratio = statistics.median(values) / base
            print(f"   {name:<20} {ms(values)}   x{ratio:5.1f}")

        home, run_id = make_home(root, 2000)
        print("2. run monitor (ternary, 2000 steps logged), one new step applied + full "
              "recomposite:")
        interval = line_chart.MIN_BUILD_INTERVAL_S
        for size in ((80, 24), (120, 40)):
            applies, polls = asyncio.run(bench_monitor(home, run_id, size, args.updates // 2))
            print(f"   {size[0]}x{size[1]:<3} screen      {ms(applies)}")
        line_chart.MIN_BUILD_INTERVAL_S = interval
        print(f"   poll tick (thread) {ms(polls)}")

        if shutil.which("tmux") is None:
            print("3. skipped: needs tmux")
            return
        print(f"3. real terminal (tmux 120x40), monitor of a live run at 10 steps/s, "
              f"{args.seconds:.0f} s:")
        got = bench_terminal(home, run_id, args.seconds)
        lat = sorted(got["latencies"])
        print(f"   TUI CPU while watching: {got['cpu'] * 100:5.1f}% of one core "
              f"(idle on the same screen: {got['idle_cpu'] * 100:.1f}%), "
              f"{got['steps']} steps arrived")
        if lat:
            print(f"   commit -> on screen: median {statistics.median(lat) * 1e3:.0f} ms, "
                  f"max {lat[-1] * 1e3:.0f} ms over {len(lat)} samples "
                  "(includes tmux capture polling)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
