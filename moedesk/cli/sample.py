"""`moedesk sample RUN[@STEP|@best]` and `moedesk route RUN[@STEP|@best]`: what a model
writes, and which experts each token goes to.

Both read a checkpoint directly (read-only store access to find the run's folder; no
supervisor, nothing written), load it with `moedesk.train.generate.load_sampler` (torch
is imported inside the commands, so `moedesk --help` stays fast), and either stream a
continuation to stdout as it is generated (`sample`) or feed a given text (`route`).
The routing view prints the text once per MoE layer (or the `--layer` chosen), each run
of tokens coloured by its top expert (the highest gate weight) with the colours of
`moedesk.tui.palette`; without colour (NO_COLOR, a pipe) each run is followed by its
expert id in brackets. `--json` gives every token's experts and gate weights per layer.
Every bad input is a one-line error and exit code 2.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from moedesk.cli.app import HomeOpt, JsonOpt, app, console, err_console, fail, home_of, print_json
from moedesk.profiles.schema import LM_KINDS
from moedesk.runner.launch import RunError, checkpoint_of
from moedesk.store import StoreError
from moedesk.train.sampling import (
    SAMPLE_ERRORS,
    SampleSettings,
    random_seed,
    tokenizer_for,
    top_expert,
)
from moedesk.tui.format import display_piece, terminal_safe
from moedesk.tui.palette import expert_style

DEFAULTS = SampleSettings()
RefArg = Annotated[str, typer.Argument(help="RUN, RUN@STEP or RUN@best (run id or name).",
                                       show_default=False)]
LayerOpt = Annotated[int | None, typer.Option(
    "--layer", help="Only this MoE block (default: every MoE block, one line each).",
    show_default=False)]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")]
ThreadsOpt = Annotated[int, typer.Option(
    min=0, help="torch CPU threads; 0 = the run's train.threads (torch's default if 0 too).")]


def _load(home: Path | None, ref: str, routing: bool, device: str, threads: int):
    """(run info, checkpoint, sampler); every problem is a clear error, exit 2."""
    kinds, purpose = (("topk",), "a routing view (experts to route to)") if routing else \
        (LM_KINDS, "sampling (a language model)")
    try:
        info, ckpt = checkpoint_of(home_of(home), ref, kinds, purpose)
    except (RunError, StoreError) as exc:
        fail(str(exc))
    try:
        tokenizer_for(info.config, info.row["run_dir"])
    except SAMPLE_ERRORS as exc:
        fail(f"run {info.id}: {str(exc)}")
    import torch

    from moedesk.train.generate import load_sampler

    threads = threads or info.config["train"].get("threads", 0)
    if threads:
        torch.set_num_threads(threads)
    try:
        return info, ckpt, load_sampler(ckpt.path, device)
    except SAMPLE_ERRORS as exc:
        fail(str(exc))


def _read_text(text: str | None, file: Path | None, what: str) -> bytes | None:
    if text is not None and file is not None:
        fail(f"give one of --{what} and --{what}-file")
    if file is None:
        return None if text is None else text.encode("utf-8")
    try:
        return file.read_bytes()
    except OSError as exc:
        fail(f"--{what}-file: cannot read {str(file)}: {exc.strerror or exc}")


def _layers(sampler, layer: int | None) -> list[int]:
    if layer is None:
        return sampler.moe_layers
    if layer not in sampler.moe_layers:
        fail(f"--layer: got {layer}; this model's MoE blocks are "
             f"{', '.join(map(str, sampler.moe_layers))}")
    return [layer]


def routing_lines(tokens: list, layers: list[int], colour: bool) -> list[Text]:
    """One line per layer: runs of tokens with the same top expert, coloured or tagged."""
    lines = []
    for layer in layers:
        line = Text()
        line.append(f"L{layer} ", style="bold")
        run_text, run_expert, prompt_end = "", None, False
        for i, token in enumerate(tokens):
            expert = top_expert(token.routes[layer])
            boundary = i > 0 and tokens[i - 1].prompt and not token.prompt
            if run_text and (expert != run_expert or boundary):
                _append_run(line, run_text, run_expert, colour)
                run_text = ""
            if boundary and not prompt_end:
                line.append("│" if colour else " | ", style="bold")
                prompt_end = True
            run_text, run_expert = run_text + display_piece(token.text), expert
        if run_text:
            _append_run(line, run_text, run_expert, colour)
        lines.append(line)
    return lines


def _append_run(line: Text, text: str, expert: int, colour: bool) -> None:
    if colour:
        line.append(text, style=expert_style(expert))
    else:
        line.append(f"{text}[{expert}]")


def legend(tokens: list, layers: list[int], num_experts: int, colour: bool) -> Text:
    """The experts with each one's share of the tokens' first choices, over the layers shown."""
    counts = [0] * num_experts
    for token in tokens:
        for layer in layers:
            counts[top_expert(token.routes[layer])] += 1
    total = sum(counts) or 1
    text = Text()
    text.append("experts (top-1 by gate weight; share of tokens): ", style="dim")
    for e, n in enumerate(counts):
        if colour:
            text.append(f" {e} ", style=expert_style(e))
            text.append(f" {n / total:.0%}  ")
        else:
            text.append(f"[{e}] {n / total:.0%}  ")
    if not colour:
        text.append("· text[e]: the text before [e] went to expert e", style="dim")
    if any(t.prompt for t in tokens) and any(not t.prompt for t in tokens):
        text.append(f"  {'│' if colour else '|'} prompt ends", style="dim")
    return text


def _use_colour() -> bool:
    # 16-colour terminals would merge the expert colours: they get the ids in brackets
    return console.color_system in ("256", "truecolor") and not console.no_color


def _token_json(token, layers: list[int]) -> dict:
    out = {"id": token.id, "text": token.text, "prompt": token.prompt}
    if token.routes:
        out["routing"] = {str(layer): {"experts": token.routes[layer][0],
                                       "gates": [round(g, 6) for g in token.routes[layer][1]]}
                          for layer in layers}
    return out


def _report(info, ckpt, sampler, tokens, layers, extra: dict) -> dict:
    return {"run": info.id, "name": info.name, "kind": info.kind, "step": ckpt.step,
            "checkpoint": str(ckpt.path), "moe_layers": layers, **extra,
            "tokens": [_token_json(t, layers) for t in tokens]}


@app.command()
def sample(
    ref: RefArg,
    prompt: Annotated[str | None, typer.Option(help="Text to continue (default: the first "
                                               "words of a line of the run's data).",
                                               show_default=False)] = None,
    prompt_file: Annotated[Path | None, typer.Option(help="Read the prompt from this file.",
                                                     show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] =
        DEFAULTS.max_new_tokens,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = DEFAULTS.temperature,
    top_k: Annotated[int, typer.Option(help="Draw from the k likeliest tokens; 0 = all.")] =
        DEFAULTS.top_k,
    top_p: Annotated[float, typer.Option(help="Draw from the smallest set holding p of the "
                                              "probability; 1 = all.")] = DEFAULTS.top_p,
    seed: Annotated[int | None, typer.Option(help="Fixes the draws (default: a fresh seed, "
                                                  "reported).", show_default=False)] = None,
    routing: Annotated[bool, typer.Option("--routing", help="Then show each token coloured "
                                                            "by its top expert.")] = False,
    layer: LayerOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 0,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Continue a prompt with a dense or topk run's checkpoint, streaming tokens as made."""
    settings = SampleSettings(max_new_tokens, temperature, top_k, top_p,
                              random_seed() if seed is None else seed)
    problems = settings.problems()
    if problems:
        fail(problems)
    data = _read_text(prompt, prompt_file, "prompt")
    info, ckpt, sampler = _load(home, ref, routing, device, threads)
    layers = _layers(sampler, layer) if routing else []
    try:
        if data is None:
            from moedesk.train.generate import default_prompts

            data = default_prompts(sampler.profile, tokenizer=sampler.tokenizer)[0]
        ids = sampler.tokenizer.encode(data)
        sampler.check_prompt(ids)
    except SAMPLE_ERRORS as exc:
        fail(str(exc))
    colour = _use_colour()
    # a terminal gets no raw control characters (a model may write an escape sequence)
    shown = terminal_safe if console.is_terminal else str
    if not as_json:  # the prompt dim, then the continuation as it comes
        console.print(Text(shown(data.decode("utf-8", "replace")), style="dim"), end="",
                      highlight=False, markup=False, soft_wrap=True)
    out = console.file
    tokens, start = [], time.perf_counter()
    try:
        for token in sampler.stream(ids, settings, routing=routing):
            tokens.append(token)
            if not (as_json or token.prompt):
                out.write(shown(token.text))
                out.flush()
    except KeyboardInterrupt:
        out.write("\n")
        fail("interrupted", code=130)
    seconds = time.perf_counter() - start
    generated = [t for t in tokens if not t.prompt]
    text = "".join(t.text for t in generated)
    if as_json:
        print_json(_report(info, ckpt, sampler, tokens, layers, {
            "prompt": data.decode("utf-8", "replace"), "text": text,
            "settings": settings.to_dict(), "seconds": round(seconds, 4)}))
        return
    out.write("\n")
    out.flush()
    if routing:
        _print_routing(tokens, layers, sampler, colour)
    err_console.print(f"run {info.id} ({info.name}) step {ckpt.step} · {len(generated)} "
                      f"tokens in {seconds:.2f} s ({len(generated) / max(seconds, 1e-9):.0f}/s) "
                      f"on {sampler.device} · seed {settings.seed} · temperature "
                      f"{settings.temperature:g}", style="dim", highlight=False)


def _print_routing(tokens, layers, sampler, colour: bool) -> None:
    console.print()
    for line in routing_lines(tokens, layers, colour):
        console.print(line, highlight=False, markup=False)
    num_experts = sampler.profile.moe.num_experts
    console.print(legend(tokens, layers, num_experts, colour), highlight=False, markup=False)


@app.command()
def route(
    ref: RefArg,
    text: Annotated[str | None, typer.Option(help="The text to route.",
                                             show_default=False)] = None,
    file: Annotated[Path | None, typer.Option(help="Route this file's text.",
                                              show_default=False)] = None,
    layer: LayerOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 0,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Show which experts each token of a text goes to (a topk run's checkpoint)."""
    data = _read_text(text, file, "text")
    if data is None:
        fail("give the text to route with --text TEXT or --file FILE")
    info, ckpt, sampler = _load(home, ref, True, device, threads)
    layers = _layers(sampler, layer)
    try:
        ids = sampler.tokenizer.encode(data, "the text")
        tokens = list(sampler.stream(ids, DEFAULTS, routing=True, generate=False))
    except SAMPLE_ERRORS as exc:
        fail(str(exc))
    if as_json:
        print_json(_report(info, ckpt, sampler, tokens, layers,
                           {"text": data.decode("utf-8", "replace")}))
        return
    console.print(f"run {info.id} ({info.name}) step {ckpt.step}: {len(tokens)} tokens",
                  style="dim", highlight=False)
    colour = _use_colour()
    for line in routing_lines(tokens, layers, colour):
        console.print(line, highlight=False, markup=False)
    console.print(legend(tokens, layers, sampler.profile.moe.num_experts, colour),
                  highlight=False, markup=False)


__all__ = ["sample", "route", "routing_lines", "legend"]
