"""moedesk export: transformers loads the folder and computes moedesk's logits (fp32, 1e-4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moedesk.data.prepare import prepare
from moedesk.data.tokenizer import BPETokenizer
from moedesk.export.hf import EXPORT_FILE, ExportError, export_checkpoint, permute_rope
from moedesk.profiles import load_profile, profile_to_dict
from moedesk.train import loop
from moedesk.train.checkpoint import save_checkpoint

transformers = pytest.importorskip("transformers", reason="the [hf] extra (dev installs it)")

REPO = Path(__file__).resolve().parents[2]
SMALL = {"model.dim": 32, "model.n_heads": 4, "model.n_kv_heads": 2, "model.n_layers": 2,
         "model.max_seq_len": 32, "data.seq_len": 16, "data.grammar_sentences": 300}


def checkpoint(tmp_path: Path, profile_name: str, seed: int = 0, bias: float = 0.0,
               **overrides) -> tuple[Path, object]:
    profile = load_profile(REPO / "profiles" / profile_name, {**SMALL, **overrides})
    torch.manual_seed(seed)
    model = loop.build_model(profile)
    with torch.no_grad():  # trained-looking weights: norms and routers away from their init
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif "router" in name:
                p.normal_(0, 0.5)
        for ffn in getattr(model, "moe_ffns", list)():
            ffn.expert_bias_E.copy_(bias * torch.randn(ffn.num_experts))
    state = {"kind": profile.kind, "step": 5, "config": profile_to_dict(profile),
             "model": model.state_dict()}
    return save_checkpoint(state, tmp_path / "run", 5).path, model


def their_logits(folder: Path, idx: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return hf(idx).logits


def ours(model, idx):
    model.eval()
    with torch.no_grad():
        return model(idx)[0]


IDX = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(1))


def test_rope_permutation_moves_pairs_to_halves():
    w = torch.arange(8.0).unsqueeze(1)  # one head of width 8: rows 0..7
    assert permute_rope(w, 1).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


# each export writes, reloads and compares a model: seconds each, so outside the fast tier
@pytest.mark.slow
@pytest.mark.parametrize("tied", [True, False])
def test_dense_exports_as_llama_with_a_byte_exact_tokenizer(tmp_path, tied):
    from transformers import AutoTokenizer

    path, model = checkpoint(tmp_path, "tiny_dense.toml", **{"model.tie_embeddings": tied})
    report = export_checkpoint(path, tmp_path / "hf")
    assert report.architecture == "LlamaForCausalLM" and report.exact
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is tied
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert (tmp_path / "hf" / "generation_config.json").is_file()
    diff = (their_logits(tmp_path / "hf", IDX) - ours(model, IDX)).abs().max()
    assert diff < 1e-4
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "héllo\x00 wörld 🎉\n\tend"
    assert tok(text)["input_ids"] == list(text.encode("utf-8"))
    assert tok.decode(list(text.encode("utf-8"))) == text


@pytest.mark.slow
def test_topk_exports_as_mixtral_dense_blocks_included(tmp_path):
    # block 0 dense (FFN 96 wide), block 1 MoE with experts 48 wide: padded to 96, exact
    path, model = checkpoint(tmp_path, "tiny_topk.toml", **{
        "moe.moe_layers": [1], "model.ffn_hidden": 96, "moe.bias_balancing": False,
        "moe.capacity_factor": 0.0})
    report = export_checkpoint(path, tmp_path / "hf")
    assert report.architecture == "MixtralForCausalLM" and report.exact
    assert report.notes == ["dense blocks are stored as identical experts (exact)"]
    diff = (their_logits(tmp_path / "hf", IDX) - ours(model, IDX)).abs().max()
    assert diff < 1e-4
    saved = json.loads((tmp_path / "hf" / EXPORT_FILE).read_text())
    assert saved["exact"] and saved["source"]["step"] == 5


@pytest.mark.slow
def test_routing_bias_is_measured_and_strict_refuses_it(tmp_path):
    path, model = checkpoint(tmp_path, "tiny_topk.toml", bias=0.3)
    with pytest.raises(ExportError, match=r"not exact \(--strict\): moe.expert_bias_E"):
        export_checkpoint(path, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()
    report = export_checkpoint(path, tmp_path / "hf")
    assert not report.exact
    (bias,) = report.approximations
    assert bias["key"] == "moe.expert_bias_E" and bias["max_abs_logit_diff"] > 1e-3
    # the export equals moedesk with the bias removed, not moedesk as trained
    assert (their_logits(tmp_path / "hf", IDX) - ours(model, IDX)).abs().max() > 1e-3
    for ffn in model.moe_ffns():
        ffn.expert_bias_E.zero_()
    assert (their_logits(tmp_path / "hf", IDX) - ours(model, IDX)).abs().max() < 1e-4


@pytest.mark.slow
def test_bpe_run_exports_its_tokenizer(tmp_path):
    from pydoc_data.topics import topics

    from transformers import AutoTokenizer

    text = "".join(topics[k] for k in sorted(topics))[:60_000]
    (tmp_path / "t.txt").write_text(text)
    prepare([tmp_path / "t.txt"], tmp_path / "ds", vocab_size=300)
    path, model = checkpoint(tmp_path, "tiny_dense.toml", **{
        "data.source": "tokens", "data.path": str(tmp_path / "ds"), "model.vocab_size": 300})
    export_checkpoint(path, tmp_path / "hf")
    ours_tok = BPETokenizer(tmp_path / "ds" / "tokenizer.json")
    theirs = AutoTokenizer.from_pretrained(tmp_path / "hf")
    sample = "The \"for\" statement iterates."
    assert theirs(sample)["input_ids"] == ours_tok.encode(sample)
    assert theirs.eos_token == "<|endoftext|>" and theirs.eos_token_id == 0
    idx = torch.tensor([ours_tok.encode(sample)])
    assert (their_logits(tmp_path / "hf", idx) - ours(model, idx)).abs().max() < 1e-4
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_checkpoint(path, tmp_path / "hf")
