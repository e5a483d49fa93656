"""Generation: the KV cache equals a full forward, the sampling rules, streaming, routing capture.

Tiny models are built in-process (no training): what is checked is that incremental
decoding computes exactly what a full forward computes, and what the sampler draws.
"""

from __future__ import annotations

import pytest
import torch

from moedesk.profiles.schema import ModelSection, MoESection
from moedesk.train.generate import KVCache, RoutingCapture, Sampler, next_token, sample_seed
from moedesk.train.model import LM
from moedesk.train.moe import MoEFFN, MoELM
from moedesk.train.sampling import (
    ByteTokenizer,
    SampleError,
    SampleSettings,
    TokenizerError,
    sentence_start,
    tokenizer_for,
)

CONTEXT = 24
# CUDA joins where a GPU is present (the device machine); the CPU always runs
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(kind: str, seed: int = 0, **model) -> LM:
    torch.manual_seed(seed)
    cfg = ModelSection(**{"vocab_size": 256, "dim": 32, "n_layers": 3, "n_heads": 4,
                          "n_kv_heads": 2, "max_seq_len": CONTEXT, "init_std": 0.2,
                          "tie_embeddings": False, **model})
    if kind == "dense":
        return LM(cfg).eval()
    lm = MoELM(cfg, MoESection(num_experts=4, top_k=2, moe_layers=[0, 2]))
    for ffn in lm.moe_ffns():
        # a decisive router and a non-zero balancing bias, so routing is not a near-tie
        torch.nn.init.normal_(ffn.router.weight_ED, std=1.0)
        ffn.expert_bias_E.copy_(torch.tensor([0.02, -0.01, 0.0, -0.01]))
    return lm.eval()


def full_logits(model: LM, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["dense", "topk"])
@pytest.mark.parametrize("chunks", [[1] * 20, [6, 1, 1, 5, 1, 3, 1, 1, 1], [20]])
def test_incremental_logits_equal_a_full_forward(kind, chunks, device):
    model = tiny(kind).to(device)
    ids = torch.randint(0, 256, (sum(chunks),), generator=torch.Generator().manual_seed(3))
    ids = ids.tolist()
    with torch.no_grad():
        expected_TV = model(torch.tensor([ids], device=device))[0][0]
    cache, got, at = KVCache(len(model.blocks), CONTEXT), [], 0
    with torch.no_grad():
        for n in chunks:
            logits_BTV, _ = model(torch.tensor([ids[at:at + n]], device=device), cache=cache)
            got.append(logits_BTV[0])
            at += n
    assert cache.length == len(ids)
    got_TV = torch.cat(got)
    assert got_TV.dtype == torch.float32
    # 1e-5 at the logits' scale: one token at a time runs other matmul kernels (M = 1)
    # than the full forward, so the two round differently (measured on an AVX-512 Xeon:
    # 3.5e-6 dense, 1.5e-5 topk with logits up to 4-5; 0 with one chunk of 20)
    scale = max(1.0, expected_TV.abs().max().item())
    assert torch.allclose(got_TV, expected_TV, atol=1e-5 * scale, rtol=0), \
        (got_TV - expected_TV).abs().max()


def naive_generate(model: LM, prompt: list[int], settings: SampleSettings) -> list[int]:
    """Reference without a cache: a full forward over everything for each new token."""
    generator = torch.Generator().manual_seed(settings.seed)
    ids = list(prompt)
    for _ in range(settings.max_new_tokens):
        ids.append(next_token(full_logits(model, ids[-CONTEXT:])[-1], settings, generator))
    return ids[len(prompt):]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dense", "topk"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_stream_matches_generation_without_a_cache(kind, temperature):
    model = tiny(kind, seed=1)
    sampler = Sampler(model, ByteTokenizer(256), torch.device("cpu"))
    prompt = list(b"The cat")
    # every token fed stays inside the context (past it the window slides)
    settings = SampleSettings(max_new_tokens=CONTEXT - len(prompt), temperature=temperature,
                              seed=7)
    tokens = list(sampler.stream(prompt, settings))
    assert [t.id for t in tokens if t.prompt] == prompt
    assert [t.id for t in tokens if not t.prompt] == naive_generate(model, prompt, settings)


@pytest.mark.parametrize("device", DEVICES)
def test_sampler_runs_on_the_device_with_the_same_draws_as_the_cpu(device):
    model = tiny("topk", seed=8)
    settings = SampleSettings(12, 1.0, top_k=40, seed=11)
    on_cpu = [t.id for t in Sampler(model, ByteTokenizer(256), torch.device("cpu")).stream(
        list(b"xy"), settings)]
    moved = Sampler(model.to(device), ByteTokenizer(256), torch.device(device))
    tokens = list(moved.stream(list(b"xy"), settings, routing=True))
    # the draws are made on a CPU generator from the device's logits
    assert [t.id for t in tokens] == on_cpu
    assert all(len(t.routes[0][0]) == 2 for t in tokens)


def test_greedy_is_the_argmax_and_ignores_the_seed():
    model = tiny("topk", seed=2)
    sampler = Sampler(model, ByteTokenizer(256), torch.device("cpu"))
    runs = [[t.id for t in sampler.stream(list(b"ab"), SampleSettings(8, 0.0, seed=s))
             if not t.prompt] for s in (0, 1)]
    assert runs[0] == runs[1]
    first = int(full_logits(model, list(b"ab"))[-1].argmax())
    assert runs[0][0] == first


@pytest.mark.slow
def test_a_seed_fixes_the_text_and_another_seed_changes_it():
    model = tiny("dense", seed=3)
    sampler = Sampler(model, ByteTokenizer(256), torch.device("cpu"))

    def text(seed):
        return [t.id for t in sampler.stream(list(b"x"), SampleSettings(16, 1.0, seed=seed))]

    assert text(5) == text(5)
    assert text(5) != text(6)


def test_top_k_and_top_p_keep_only_the_head_of_the_distribution():
    logits = torch.tensor([4.0, 3.5, 3.0, 0.0, -1.0, -2.0])
    gen = torch.Generator().manual_seed(0)
    top3 = {next_token(logits, SampleSettings(temperature=1.0, top_k=3), gen)
            for _ in range(300)}
    assert top3 == {0, 1, 2}
    probs = logits.softmax(-1)
    # p just above the first two tokens' mass: the third is needed, the fourth never
    p = float(probs[:2].sum()) + 1e-3
    nucleus = {next_token(logits, SampleSettings(temperature=1.0, top_p=p), gen)
               for _ in range(300)}
    assert nucleus == {0, 1, 2}
    assert {next_token(logits, SampleSettings(temperature=1.0, top_p=1e-6), gen)
            for _ in range(50)} == {0}
    assert next_token(logits, SampleSettings(temperature=0.0, top_k=2), gen) == 0


def test_sampling_never_touches_the_global_rng():
    model = tiny("topk", seed=4)
    sampler = Sampler(model, ByteTokenizer(256), torch.device("cpu"))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    list(sampler.stream(list(b"hello"), SampleSettings(10, 1.0, top_k=20, top_p=0.9)))
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.slow
def test_generation_slides_past_the_context():
    model = tiny("topk", seed=5)
    sampler = Sampler(model, ByteTokenizer(256), torch.device("cpu"))
    tokens = [t for t in sampler.stream(list(b"abc"), SampleSettings(2 * CONTEXT, 0.9, seed=1),
                                        routing=True) if not t.prompt]
    assert len(tokens) == 2 * CONTEXT
    assert all(set(t.routes) == {0, 2} for t in tokens)


def test_routing_capture_matches_the_routers_choice_in_a_full_forward():
    model = tiny("topk", seed=6)
    sampler = Sampler(model, ByteTokenizer(256), torch.device("cpu"))
    tokens = list(sampler.stream(list(b"Hello"), SampleSettings(10, 1.0, seed=2), routing=True))
    ids = [t.id for t in tokens]
    capture = RoutingCapture(model)
    full_logits(model, ids)
    expected = capture.take()
    capture.remove()
    assert len(expected) == len(tokens)
    for token, want in zip(tokens, expected, strict=True):
        for layer in (0, 2):
            assert token.routes[layer][0] == want[layer][0]
            assert token.routes[layer][1] == pytest.approx(want[layer][1], abs=1e-5)
            assert sum(token.routes[layer][1]) == pytest.approx(1.0, abs=1e-5)
    assert all(isinstance(m, MoEFFN) for m in capture.layers.values())
    # the hooks are gone: nothing is recorded any more
    full_logits(model, ids)
    assert all(not chunks for chunks in capture._seen.values())


@pytest.mark.slow
def test_route_only_feeds_texts_longer_than_the_context():
    model = tiny("topk", seed=7)
    sampler = Sampler(model, ByteTokenizer(256), torch.device("cpu"))
    text = list(b"x" * (2 * CONTEXT + 3))
    tokens = list(sampler.stream(text, SampleSettings(), routing=True, generate=False))
    assert [t.id for t in tokens] == text and all(t.prompt for t in tokens)
    assert all(len(t.routes[0][0]) == 2 for t in tokens)


def test_bad_prompts_are_clear_errors():
    sampler = Sampler(tiny("dense"), ByteTokenizer(256), torch.device("cpu"))
    with pytest.raises(SampleError, match="longer than this model's context"):
        list(sampler.stream([1] * (CONTEXT + 1), SampleSettings()))
    with pytest.raises(SampleError, match="empty"):
        list(sampler.stream([], SampleSettings()))
    with pytest.raises(TokenizerError, match=r"byte 0xc3 \('é'\) at byte 1.*vocab_size = 128"):
        ByteTokenizer(128).encode("né")
    with pytest.raises(TokenizerError, match="no tokenizer"):
        tokenizer_for({"data": {"source": "tokens"}, "model": {"vocab_size": 50000}})
    assert SampleSettings(max_new_tokens=0, temperature=-1, top_k=-1, top_p=0).problems() \
        and len(SampleSettings(0, -1.0, -1, 0.0).problems()) == 4
    assert SampleSettings().problems() == []


def test_byte_text_decodes_characters_whole():
    tok = ByteTokenizer(256)
    ids = tok.encode("é→x\n")
    decoder = tok.stream()
    pieces = [decoder.feed(i) for i in ids]
    assert pieces == ["", "é", "", "", "→", "x", "\n"]
    assert tok.decode(ids) == "é→x\n"
    assert tok.decode([300]) == "\ufffd"


def test_sentence_start_takes_the_first_words_of_a_full_line():
    assert sentence_start(b"ran away.\nThe old cat sat down.\nShe ran.") == b"The old cat"
    assert sentence_start(b"no line break at all here") == b"no line break"
    assert sample_seed(1, 200, 0) != sample_seed(1, 200, 1) != sample_seed(1, 400, 0)


def test_tokens_are_yielded_as_they_are_made():
    model = tiny("dense", seed=9)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    sampler = Sampler(model, ByteTokenizer(256), torch.device("cpu"))
    stream = sampler.stream(list(b"ab"), SampleSettings(10, 1.0, seed=1))
    assert [next(stream).prompt for _ in range(2)] == [True, True]
    assert len(forwards) == 1  # the prompt's one forward
    assert not next(stream).prompt and len(forwards) == 2  # then one per new token
    rest = list(stream)
    assert len(rest) == 9 and len(forwards) == 10  # the last token is never fed back
