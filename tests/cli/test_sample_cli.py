"""`moedesk sample` and `moedesk route` over a real store and real checkpoints.

The runs are made in-process without training (a created run row and a checkpoint of the
freshly initialised model, as the trainer writes it), so the commands are exercised
through Typer quickly; tests/integration/test_sample_runs.py does it with trained runs.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch
from typer.testing import CliRunner

from moedesk.cli import app
from moedesk.cli.sample import legend, routing_lines
from moedesk.paths import db_path
from moedesk.profiles import load_profile, profile_from_dict, profile_to_dict
from moedesk.store import connect_writer
from moedesk.store import runs as store_runs
from moedesk.train.checkpoint import BestTracker, save_checkpoint
from moedesk.train.generate import Token
from moedesk.train.loop import build_model
from moedesk.tui.palette import EXPERT_COLOURS
from tests.conftest import PROFILES

runner = CliRunner()


def make_run(home, profile_name: str, *, checkpoint: bool = True, best: bool = False,
             **config_changes) -> int:
    profile = load_profile(PROFILES / f"{profile_name}.toml")
    config = profile_to_dict(profile)
    for key, value in config_changes.items():
        section, name = key.split("__")
        config[section][name] = value
    db = connect_writer(db_path(home))
    run_id, _ = store_runs.create_run(db.conn, config=config, profile_path="x.toml", home=home)
    db.close()
    if checkpoint and profile.kind != "ternary":
        torch.manual_seed(0)
        model = build_model(profile_from_dict(config))
        tracker = BestTracker("val/loss") if best else None
        for step in (10, 20):
            if tracker:
                tracker.offer(step, 3.0 if step == 10 else 4.0)
            state = {"format": "moedesk-lm-1", "kind": profile.kind, "step": step,
                     "config": config, "model": model.state_dict()}
            save_checkpoint(state, home / str(run_id), step, best=tracker)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    ids = {"topk": make_run(home, "tiny_topk", best=True), "dense": make_run(home, "tiny_dense"),
           "ternary": make_run(home, "tiny_ternary"),
           "empty": make_run(home, "tiny_topk", checkpoint=False),
           "narrow": make_run(home, "tiny_dense", model__vocab_size=128, data__source="text"),
           "tokens": make_run(home, "tiny_dense", data__source="tokens")}
    return home, ids


def invoke(home, *args):
    return runner.invoke(app, [*args, "--home", str(home)], env={"NO_COLOR": "1"})


def report(home, *args) -> dict:
    result = invoke(home, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_sample_is_deterministic_for_a_seed_and_greedy_at_temperature_zero(store):
    home, ids = store
    run = str(ids["topk"])
    a = report(home, "sample", run, "--prompt", "The cat", "--seed", "4", "--max-new-tokens", "12")
    b = report(home, "sample", run, "--prompt", "The cat", "--seed", "4", "--max-new-tokens", "12")
    c = report(home, "sample", run, "--prompt", "The cat", "--seed", "5", "--max-new-tokens", "12")
    assert a["tokens"] == b["tokens"] and a["text"] == b["text"]
    assert a["text"] != c["text"]
    assert sum(not t["prompt"] for t in a["tokens"]) == 12 and a["step"] == 20
    greedy = [report(home, "sample", run, "--prompt", "ab", "--temperature", "0", "--seed", s,
                     "--max-new-tokens", "6")["text"] for s in ("1", "2")]
    assert greedy[0] == greedy[1]
    assert a["settings"] == {"max_new_tokens": 12, "temperature": 0.8, "top_k": 0, "top_p": 1.0,
                             "seed": 4}


@pytest.mark.slow
def test_sample_prints_the_prompt_then_the_continuation(store):
    home, ids = store
    args = ("sample", f"{ids['dense']}@10", "--prompt", "Hello", "--seed", "9",
            "--max-new-tokens", "8")
    result = invoke(home, *args)
    assert result.exit_code == 0, result.output
    expected = report(home, *args)
    assert expected["step"] == 10
    assert result.stdout == "Hello" + expected["text"] + "\n"
    assert "seed 9" in result.stderr and "8 tokens" in result.stderr


def test_at_best_reads_the_marked_checkpoint(store):
    home, ids = store
    assert report(home, "sample", f"{ids['topk']}@best", "--prompt", "a",
                  "--max-new-tokens", "2")["step"] == 10


@pytest.mark.slow
def test_route_shows_every_moe_layer_with_expert_ids_in_brackets(store):
    home, ids = store
    result = invoke(home, "route", str(ids["topk"]), "--text", "The cat sat.")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if re.match(r"L\d ", line)]
    assert [line[:3] for line in lines] == ["L0 ", "L1 "]
    for line in lines:
        assert set(re.findall(r"\[(\d+)\]", line)) <= {"0", "1", "2", "3"}
        assert re.sub(r"\[\d+\]", "", line[3:]) == "The cat sat."
    assert "text[e]: the text before [e] went to expert e" in result.stdout
    only = invoke(home, "route", str(ids["topk"]), "--text", "ab", "--layer", "1")
    assert only.exit_code == 0 and "L1 " in only.stdout and "L0 " not in only.stdout


def test_route_json_gives_every_tokens_experts_and_gates(store):
    home, ids = store
    out = report(home, "route", str(ids["topk"]), "--text", "é and more")
    assert [t["id"] for t in out["tokens"]] == list("é and more".encode())
    assert out["moe_layers"] == [0, 1]
    for token in out["tokens"]:
        for layer in ("0", "1"):
            experts, gates = token["routing"][layer]["experts"], token["routing"][layer]["gates"]
            assert len(experts) == 2 == len(set(experts)) and sum(gates) == pytest.approx(1, abs=1e-5)
    assert out["tokens"][0]["text"] == "" and out["tokens"][1]["text"] == "é"


@pytest.mark.slow
def test_sample_with_routing_ends_with_the_routing_view(store):
    home, ids = store
    out = report(home, "sample", str(ids["topk"]), "--prompt", "Hi", "--routing", "--layer", "0",
                 "--max-new-tokens", "5", "--seed", "1")
    assert len(out["tokens"]) == 7 and all(set(t["routing"]) == {"0"} for t in out["tokens"])
    result = invoke(home, "sample", str(ids["topk"]), "--prompt", "Hi", "--routing",
                    "--max-new-tokens", "5", "--seed", "1")
    assert result.exit_code == 0
    assert re.search(r"^L0 Hi?\[\d\]", result.stdout, re.M) and re.search(r"^L1 H", result.stdout, re.M)
    assert " | " in result.stdout


@pytest.mark.parametrize("args, message", [
    (["sample", "{ternary}"], "is a ternary run; sampling (a language model) needs kind dense "
                              "or topk"),
    (["sample", "{dense}", "--routing"], "is a dense run; a routing view (experts to route to) "
                                         "needs kind topk"),
    (["route", "{dense}", "--text", "a"], "is a dense run; a routing view"),
    (["sample", "{empty}"], "no complete checkpoint at all"),
    (["sample", "{dense}@best"], "does not keep one; set [checkpoint] keep_best"),
    (["sample", "{dense}@7"], "no complete checkpoint at step 7"),
    (["sample", "{dense}@x"], "use a step number or 'best'"),
    (["sample", "nosuchrun"], "no run 'nosuchrun'"),
    (["sample", "{dense}", "--prompt", "x" * 40], "longer than this model's context"),
    (["sample", "{narrow}", "--prompt", "né"], "byte 0xc3 ('é') at byte 1, outside"),
    (["sample", "{tokens}", "--prompt", "a"], "no tokenizer"),
    (["sample", "{dense}", "--prompt", ""], "the prompt is empty"),
    (["sample", "{dense}", "--prompt", "a", "--prompt-file", "x"], "give one of --prompt"),
    (["sample", "{dense}", "--prompt-file", "/no/such/file"], "cannot read /no/such/file"),
    (["sample", "{dense}", "--temperature", "-1", "--top-p", "0"], "--temperature: got -1.0"),
    (["route", "{topk}"], "give the text to route with --text TEXT or --file FILE"),
    (["route", "{topk}", "--text", "a", "--layer", "5"], "this model's MoE blocks are 0, 1"),
    (["sample", "{dense}", "--device", "tpu"], "--device: got 'tpu'"),
])
def test_bad_input_is_a_clear_error_with_exit_code_2(store, args, message):
    home, ids = store
    args = [a.format(**{k: str(v) for k, v in ids.items()}) for a in args]
    result = invoke(home, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert message in " ".join(result.stderr.split()), result.stderr


@pytest.mark.slow
def test_sample_and_route_never_write_the_store(store):
    home, ids = store
    def contents():
        # the database and its write-ahead log (a reader may create an empty one)
        return [hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else hashlib.sha256(
            b"").hexdigest() for p in (home / "moedesk.db", home / "moedesk.db-wal")]

    before = contents()
    assert invoke(home, "sample", str(ids["topk"]), "--prompt", "a",
                  "--max-new-tokens", "3").exit_code == 0
    assert invoke(home, "route", str(ids["topk"]), "--text", "a").exit_code == 0
    assert contents() == before


def _tokens(text: str, experts: list[int], prompt: int) -> list[Token]:
    return [Token(ord(c), c, i < prompt, {3: ([e, (e + 1) % 4], [0.7, 0.3])})
            for i, (c, e) in enumerate(zip(text, experts, strict=True))]


def test_routing_lines_colour_runs_with_the_expert_palette_or_tag_them():
    tokens = _tokens("ab\ncd", [1, 1, 2, 2, 0], prompt=2)
    plain = routing_lines(tokens, [3], colour=False)[0]
    assert plain.plain == "L3 ab[1] | ↵c[2]d[0]"
    coloured = routing_lines(tokens, [3], colour=True)[0]
    assert coloured.plain == "L3 ab│↵cd"
    backgrounds = [(coloured.plain[s.start:s.end], s.style.bgcolor.name)
                   for s in coloured.spans if getattr(s.style, "bgcolor", None)]
    assert backgrounds == [("ab", EXPERT_COLOURS[1]), ("↵c", EXPERT_COLOURS[2]),
                           ("d", EXPERT_COLOURS[0])]
    # the first choice is the highest gate, whatever its position in the router's list
    swapped = [Token(t.id, t.text, t.prompt, {3: (t.routes[3][0], [0.2, 0.8])}) for t in tokens]
    assert routing_lines(swapped, [3], colour=False)[0].plain.startswith("L3 ab[2]")
    text = legend(tokens, [3], 4, colour=False).plain
    assert "[0] 20%" in text and "[1] 40%" in text and "[3] 0%" in text and "prompt ends" in text
