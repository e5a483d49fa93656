"""The sample server: `python -m moedesk.train.sample_server`, the TUI's sample view's engine.

The TUI never imports torch, so its sample view starts this process once and talks to
it in JSON lines: requests on stdin, events on stdout (one object per line, flushed).
It runs at low priority (nice +10) on one torch thread, so next to a training run it
only ever takes the CPU share of one low-priority thread: the trainer is not slowed
beyond that. Models are loaded on first use and kept while the checkpoint is the same.

Requests:
  {"type": "generate", "id": N, "checkpoint": PATH, "prompt": TEXT, "routing": BOOL,
   "seed": S, "max_new_tokens"?, "temperature"?, "top_k"?, "top_p"?}
  {"type": "cancel"}              stop the generation in progress (checked between tokens)
  a new "generate" while one runs cancels it first; end of stdin ends the server
Events:
  {"type": "loaded", "id", "checkpoint", "step", "kind", "moe_layers", "num_experts",
   "context", "device", "seconds"}
  {"type": "token", "id", "token", "text", "prompt", "top": {layer: expert}}
       text: what the token completes, raw as the model wrote it (the TUI makes it safe
       to draw); top: its top expert per MoE layer (routing only)
  {"type": "done", "id", "generated", "seconds", "settings", "cancelled"}
  {"type": "error", "id", "message"}
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from pathlib import Path

NICE = 10
EOF = {"type": "eof"}  # stdin closed: the TUI is gone


def _emit(out, event: dict) -> None:
    out.write(json.dumps(event, separators=(",", ":")) + "\n")
    out.flush()


def _read(stream, requests: queue.Queue) -> None:
    for line in stream:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        if isinstance(request, dict):
            requests.put(request)
    requests.put(EOF)


class Server:
    def __init__(self, out):
        self.out = out
        self.sampler = None
        self.checkpoint: str | None = None

    def load(self, request: dict) -> None:
        from moedesk.train.generate import load_sampler

        path = str(request["checkpoint"])
        if self.sampler is not None and path == self.checkpoint:
            return
        start = time.perf_counter()
        self.sampler, self.checkpoint = load_sampler(Path(path), request.get("device", "cpu")), path
        profile = self.sampler.profile
        _emit(self.out, {"type": "loaded", "id": request.get("id"), "checkpoint": path,
                         "step": self.sampler.step, "kind": profile.kind,
                         "moe_layers": self.sampler.moe_layers,
                         "num_experts": profile.moe.num_experts if profile.kind == "topk"
                         else 0, "context": self.sampler.context,
                         "device": str(self.sampler.device),
                         "seconds": round(time.perf_counter() - start, 3)})

    def generate(self, request: dict, requests: queue.Queue) -> dict | None:
        """Serve one request; returns what arrived meanwhile and stopped it (None if none)."""
        from moedesk.train.sampling import SAMPLE_ERRORS, SampleError, SampleSettings, top_expert

        rid = request.get("id")
        try:
            self.load(request)
            fields = {k: request[k] for k in ("max_new_tokens", "temperature", "top_k",
                                               "top_p", "seed") if k in request}
            settings = SampleSettings(**fields)
            problems = settings.problems()
            if problems:
                raise SampleError("; ".join(problems))
            ids = self.sampler.tokenizer.encode(str(request.get("prompt", "")))
            routing = bool(request.get("routing")) and bool(self.sampler.moe_layers)
            start, generated, pending = time.perf_counter(), 0, None
            for token in self.sampler.stream(ids, settings, routing=routing):
                event = {"type": "token", "id": rid, "token": token.id, "text": token.text,
                         "prompt": token.prompt}
                if routing:
                    event["top"] = {str(k): top_expert(v) for k, v in token.routes.items()}
                _emit(self.out, event)
                generated += not token.prompt
                try:
                    pending = requests.get_nowait()
                except queue.Empty:
                    continue
                break  # a cancel, a new request or the end of stdin
            _emit(self.out, {"type": "done", "id": rid, "generated": generated,
                             "seconds": round(time.perf_counter() - start, 4),
                             "settings": settings.to_dict(), "cancelled": pending is not None})
            return pending
        except (*SAMPLE_ERRORS, OSError, KeyError, TypeError, ValueError) as exc:
            _emit(self.out, {"type": "error", "id": rid, "message": str(exc)})
            return None


def main() -> int:
    try:
        os.nice(NICE)
    except OSError:
        pass
    import torch

    torch.set_num_threads(1)
    requests: queue.Queue = queue.Queue()
    threading.Thread(target=_read, args=(sys.stdin, requests), daemon=True).start()
    server = Server(sys.stdout)
    request = requests.get()
    while request is not EOF:
        after = server.generate(request, requests) if request.get("type") == "generate" \
            else None
        request = after if after is not None and after.get("type") != "cancel" \
            else requests.get()
    return 0


if __name__ == "__main__":
    sys.exit(main())
