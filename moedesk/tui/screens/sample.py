"""SampleScreen: type a prompt, watch a dense or topk run's continuation stream in (`w` in the monitor).

The TUI never imports torch: generation runs in the sample server
(`python -m moedesk.train.sample_server`), a child process started on the first prompt
and kept while the screen is open, at low priority on one thread, so a run that is
training beside it loses at most that one low-priority thread's share of the CPU. A
thread worker writes each request to the server and turns every JSON line it prints
into a `Served` message; the UI only appends tokens. The checkpoint is the newest one
(resolved again at each prompt, so a training run's progress shows), its best, or a
chosen step (`moedesk.runner.checkpoints`). For topk runs every token comes with its
top expert per MoE layer: ctrl+r colours the text by it, ctrl+n picks the layer. Below,
the newest samples the trainer wrote (`[train] sample_every`, the samples table), read
every `CHECK_S` seconds in a worker over a read-only Reader.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Select, Static

from moedesk.paths import db_path
from moedesk.runner.checkpoints import (
    CheckpointError,
    list_checkpoints,
    read_best,
    resolve_checkpoint,
)
from moedesk.store import Reader, StoreError
from moedesk.tui.format import display_piece
from moedesk.tui.widgets.token_stream import TokenStream

CHECK_S = 2.0
LATEST = "latest"
SERVER = [sys.executable, "-m", "moedesk.train.sample_server"]


class SampleScreen(Screen):
    DEFAULT_CSS = """
    SampleScreen #sample-bar { height: 3; }
    SampleScreen #sample-prompt { width: 1fr; }
    SampleScreen #sample-checkpoint { width: 30; }
    SampleScreen #sample-output { height: 1fr; border: round $primary-darken-2; }
    SampleScreen #sample-training { height: auto; max-height: 8;
                                    border: round $primary-darken-3; padding: 0 1; }
    SampleScreen #sample-head { height: auto; padding: 0 1; }
    """
    BINDINGS = [
        Binding("escape", "back", "Stop/Back", id="sample-back"),
        Binding("ctrl+r", "toggle_routing", "Routing", id="sample-routing"),
        Binding("ctrl+n", "next_layer", "Layer", id="sample-layer"),
    ]

    @dataclass
    class Served(Message):
        event: dict  # one event of the sample server (see sample_server.py)

    @dataclass
    class Listed(Message):
        options: list[tuple[str, str]]  # (label, value) of the checkpoint choices
        samples: list[dict]  # the newest stored training samples
        error: str | None

    def __init__(self, run_id: int, run_dir: str, name: str, kind: str):
        super().__init__()
        self.run_id, self.run_dir, self.run_name, self.kind = run_id, Path(run_dir), name, kind
        self.proc: subprocess.Popen | None = None
        self.request_id = 0
        self.seed = 0
        self.busy = False
        self.max_new_tokens: int | None = None  # None: the server's default (SampleSettings)
        self.loaded: dict = {}  # the server's last "loaded" event
        self.events = 0  # server events handled (tests wait on it)
        self.lists = 0  # checkpoint/sample refreshes applied (tests wait on it)
        self._options: list[tuple[str, str]] = []
        self._last_prompt = ""
        self._request: dict = {}  # the generate request in progress
        self._follow_latest = False  # it names the newest checkpoint ("latest")

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="sample-head")
        with Horizontal(id="sample-bar"):
            yield Input(placeholder="a prompt; Enter generates", id="sample-prompt")
            yield Select([(LATEST, LATEST)], value=LATEST, allow_blank=False,
                         id="sample-checkpoint")
        with VerticalScroll(id="sample-output"):
            yield TokenStream(id="sample-stream")
        yield Static(id="sample-training")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.title = "moedesk"
        self.sub_title = f"{self.run_name} · sample"
        self.query_one("#sample-output").border_title = "continuation"
        self.query_one("#sample-training").border_title = "samples during training"
        self._head("type a prompt and press Enter; the model continues it here")
        self.query_one("#sample-prompt", Input).focus()
        self._refresh_lists()
        self.set_interval(CHECK_S, self._refresh_lists)

    def on_unmount(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()  # end of input: the server exits
                proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()

    def _head(self, message: str, style: str = "") -> None:
        self.query_one("#sample-head", Static).update(Text(message, style=style))

    # checkpoints and stored samples, off the UI thread

    @work(thread=True, exclusive=True, group="sample-lists", exit_on_error=False)
    def _refresh_lists(self) -> None:
        found = list_checkpoints(self.run_dir)
        options = [(f"latest (step {found[-1].step})" if found else "latest (none yet)", LATEST)]
        best = read_best(self.run_dir)
        if best is not None and any(c.step == best["step"] for c in found):
            options.append((f"best (step {best['step']})", "best"))
        options += [(f"step {c.step}", str(c.step)) for c in reversed(found)]
        try:
            with Reader(db_path(Path(self.app.home))) as reader:
                samples = reader.samples(self.run_id, limit=4)
        except (StoreError, OSError) as exc:
            self.post_message(self.Listed(options, [], str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - sqlite errors while a writer migrates
            self.post_message(self.Listed(options, [], f"cannot read the samples: {exc}"))
            return
        self.post_message(self.Listed(options, samples, None))

    def on_sample_screen_listed(self, message: Listed) -> None:
        self.lists += 1
        select = self.query_one("#sample-checkpoint", Select)
        if message.options != self._options:
            value = select.value
            self._options = message.options
            select.set_options(message.options)
            values = [v for _, v in message.options]
            select.value = value if value in values else LATEST
        panel = self.query_one("#sample-training", Static)
        if message.error:
            panel.update(Text(message.error, style="#ff5f5f"))
        elif not message.samples:
            panel.update(Text("none yet: the trainer writes one every train.sample_every "
                              "steps", style="italic dim"))
        else:
            text = Text()
            for row in message.samples:
                text.append(f"step {row['step']} ", style="bold")
                text.append(display_piece(row["prompt"]), style="dim")
                text.append(display_piece(row["text"]) + "\n")
            text.rstrip()
            panel.update(text)

    # generation

    def on_input_submitted(self, event: Input.Submitted) -> None:
        prompt = event.value
        if not prompt:
            self.notify("type a prompt first", title="sample", severity="warning")
            return
        choice = str(self.query_one("#sample-checkpoint", Select).value)
        try:
            checkpoint = resolve_checkpoint(self.run_dir, None if choice == LATEST else choice)
        except CheckpointError as exc:
            self._head(str(exc), "#ff5f5f")
            return
        self.request_id += 1
        self.seed += 1
        self._last_prompt = prompt
        stream = self.query_one(TokenStream)
        stream.clear()
        self.busy = True
        self._head(f"step {checkpoint.step}: generating…" if self.loaded.get("checkpoint") ==
                   str(checkpoint.path) else f"loading step {checkpoint.step}…", "dim")
        request = {"type": "generate", "id": self.request_id, "checkpoint": str(checkpoint.path),
                   "prompt": prompt, "routing": self.kind == "topk", "seed": self.seed}
        if self.max_new_tokens is not None:
            request["max_new_tokens"] = self.max_new_tokens
        self._request, self._follow_latest = request, choice == LATEST
        self._send(request)

    def _send(self, request: dict) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(SERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True, bufsize=1)
            self._serve(self.proc)
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            self.busy = False
            self._head(f"the sample server is gone ({exc}); press Enter to restart it",
                       "#ff5f5f")

    @work(thread=True, group="sample-server", exit_on_error=False)
    def _serve(self, proc: subprocess.Popen) -> None:
        """Every line the server prints becomes a message, until it exits."""
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.post_message(self.Served(event))
        self.post_message(self.Served({"type": "exit", "code": proc.wait()}))

    def on_sample_screen_served(self, message: Served) -> None:
        event, stream = message.event, self.query_one(TokenStream)
        self.events += 1
        kind = event.get("type")
        if kind == "exit":
            if self.busy:
                self._head(f"the sample server stopped (exit code {event['code']}); press "
                           "Enter to start it again", "#ff5f5f")
            self.busy = False
            return
        if event.get("id") != self.request_id:
            return  # a cancelled request's last words
        if kind == "loaded":
            self.loaded = event
            self._show_routing()
            self._head(f"step {event['step']} loaded in {event['seconds']:.1f} s on "
                       f"{event['device']}: generating…", "dim")
        elif kind == "token":
            top = {int(k): v for k, v in (event.get("top") or {}).items()}
            stream.add(event["text"], event["prompt"], top)
            self.query_one("#sample-output", VerticalScroll).scroll_end(animate=False)
        elif kind == "done":
            self.busy = False
            settings = event["settings"]
            rate = event["generated"] / max(event["seconds"], 1e-9)
            how = "stopped" if event["cancelled"] else "done"
            command = (f"moedesk sample {self.run_id}@{self.loaded.get('step')} --prompt "
                       f"{shlex.quote(self._last_prompt)} --seed {settings['seed']} "
                       f"--max-new-tokens {settings['max_new_tokens']} --temperature "
                       f"{settings['temperature']:g}")
            self._head(f"{how}: {event['generated']} tokens in {event['seconds']:.2f} s "
                       f"({rate:.0f}/s), step {self.loaded.get('step')}, temperature "
                       f"{settings['temperature']:g} · again: {command}", "dim")
        elif kind == "error":
            if self._retry_newer():
                return
            self.busy = False
            self._head(event["message"], "#ff5f5f")

    def _retry_newer(self) -> bool:
        """A training run pruned the newest checkpoint between the lookup and the load:
        ask again with the newest one now (once per such checkpoint; True if sent)."""
        asked = Path(self._request.get("checkpoint", ""))
        if not self._follow_latest or asked.exists():
            return False
        try:
            newest = resolve_checkpoint(self.run_dir, None)
        except CheckpointError:
            return False
        if newest.path == asked:
            return False
        self._request = {**self._request, "checkpoint": str(newest.path)}
        self._head(f"step {newest.step}: loading (the newer checkpoint)…", "dim")
        self._send(self._request)
        return True

    # actions

    def _show_routing(self, on: bool | None = None) -> None:
        stream = self.query_one(TokenStream)
        layers = self.loaded.get("moe_layers") or []
        layer = stream.shown_layer if stream.shown_layer in layers else (layers[0] if layers else None)
        stream.show_routing(stream.routing if on is None else on, layer,
                            self.loaded.get("num_experts", 0))

    def action_toggle_routing(self) -> None:
        if self.kind != "topk":
            self.notify(f"run {self.run_id} is a {self.kind} run: no experts to route to",
                        title="routing", severity="warning")
            return
        self._show_routing(not self.query_one(TokenStream).routing)

    def action_next_layer(self) -> None:
        stream, layers = self.query_one(TokenStream), self.loaded.get("moe_layers") or []
        if not layers or stream.shown_layer not in layers:
            return
        stream.show_routing(stream.routing, layers[(layers.index(stream.shown_layer) + 1) % len(layers)],
                            self.loaded.get("num_experts", 0))

    def action_back(self) -> None:
        if self.busy and self.proc is not None:
            self._send({"type": "cancel"})
            return
        self.app.pop_screen()
