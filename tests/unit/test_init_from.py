"""--init-from: weights only from another run's checkpoint, dense -> topk upcycling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moedesk.paths import init_from_file
from moedesk.profiles import load_profile
from moedesk.train import loop
from moedesk.train.checkpoint import save_checkpoint
from moedesk.train.data import LMData
from moedesk.train.emit import ListEmitter
from moedesk.train.init_from import InitError, initial_state, load_initial_weights

REPO = Path(__file__).resolve().parents[2]
TINY_DENSE = REPO / "profiles" / "tiny_dense.toml"
TINY_TOPK = REPO / "profiles" / "tiny_topk.toml"
# the tiny topk profile on the tiny dense profile's [model] and data: experts as wide as
# the dense FFN (192), so each expert can be a copy of it
SAME_MODEL = {"model.max_seq_len": 32, "model.tie_embeddings": True, "model.ffn_hidden": 0,
              "moe.expert_hidden": 192, "data.seq_len": 32, "data.grammar_sentences": 5000,
              "seed": 1}
FAST = {"train.steps": 12, "train.warmup_steps": 2, "train.eval_batches": 1,
        "train.batch_size": 8, "checkpoint.every": 0, "train.sample_every": 0}


def dense_checkpoint(tmp_path: Path, **overrides) -> Path:
    profile = load_profile(TINY_DENSE, overrides)
    torch.manual_seed(3)
    model = loop.build_model(profile)
    state = {"kind": "dense", "step": 7, "config": {}, "model": model.state_dict()}
    return save_checkpoint(state, tmp_path / "dense", 7).path


def topk(**overrides):
    return load_profile(TINY_TOPK, {**SAME_MODEL, **overrides})


def test_upcycled_moe_computes_the_dense_function(tmp_path):
    path = dense_checkpoint(tmp_path)
    dense = loop.build_model(load_profile(TINY_DENSE))
    dense.load_state_dict(torch.load(path, weights_only=False)["model"])
    moe_profile = topk()
    moe = loop.build_model(moe_profile)
    load_initial_weights(moe, moe_profile, path)
    ffn = moe.blocks[0].ffn
    assert torch.equal(ffn.experts.w1_EFD[3], dense.blocks[0].ffn.w1.weight)
    assert torch.equal(ffn.experts.w2_EDF[0], dense.blocks[0].ffn.w2.weight)
    assert float(ffn.router.weight_ED.detach().std()) < 0.02  # the router keeps its small init
    x = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, dense_loss = dense(x[:, :-1], x[:, 1:])
        _, moe_loss = moe(x[:, :-1], x[:, 1:])
    assert abs(float(moe_loss) - float(dense_loss)) < 1e-5
    # noise breaks the copies apart, reproducibly from the seed
    noisy_profile = topk(**{"moe.upcycle_noise": 0.1})
    noisy = loop.build_model(noisy_profile)
    load_initial_weights(noisy, noisy_profile, path)
    w1 = noisy.blocks[0].ffn.experts.w1_EFD
    assert not torch.equal(w1[0], w1[1])
    again = loop.build_model(noisy_profile)
    load_initial_weights(again, noisy_profile, path)
    assert torch.equal(again.blocks[0].ffn.experts.w1_EFD, w1)


def test_mismatches_name_the_tensor(tmp_path):
    path = dense_checkpoint(tmp_path)
    source = torch.load(path, weights_only=False)
    wide = load_profile(TINY_DENSE, {"model.dim": 128})
    with pytest.raises(InitError, match=r"tensor tok_embeddings.weight: .* shape \[256, 64\], "
                                        r"this profile builds \[256, 128\]"):
        initial_state(loop.build_model(wide), source, wide)
    narrow = topk(**{"moe.expert_hidden": 96})
    with pytest.raises(InitError, match=r"tensor blocks.0.ffn.experts.w1_EFD: .*set "
                                        r"moe.expert_hidden = 192"):
        initial_state(loop.build_model(narrow), source, narrow)
    deeper = load_profile(TINY_DENSE, {"model.n_layers": 3})
    with pytest.raises(InitError, match=r"tensor blocks.2.attn_norm.weight .*no such tensor"):
        initial_state(loop.build_model(deeper), source, deeper)
    moe_state = {"kind": "topk", "model": loop.build_model(topk()).state_dict()}
    dense_profile = load_profile(TINY_DENSE)
    with pytest.raises(InitError, match="topk run; a dense model cannot"):
        initial_state(loop.build_model(dense_profile), moe_state, dense_profile)


@pytest.mark.slow
def test_upcycled_run_first_step_loss_equals_the_dense_checkpoint(tmp_path):
    """Through the trainer: a dense run, then a topk run --init-from its checkpoint; the
    topk run's step-1 training loss is the dense model's loss on that batch (fp32)."""
    dense_profile = load_profile(TINY_DENSE, FAST)
    assert loop.train_lm(dense_profile, tmp_path / "dense", ListEmitter()) == "completed"
    ckpt = next((tmp_path / "dense" / "checkpoints").glob("step_*.pt"))
    moe_profile = topk(**FAST, **{"train.log_every": 1})
    run = tmp_path / "moe"
    run.mkdir()
    init_from_file(run).write_text(json.dumps({"checkpoint": str(ckpt), "run_id": 1}))
    emitter = ListEmitter()
    assert loop.train_lm(moe_profile, run, emitter) == "completed"
    first = next(e for e in emitter.events if e["type"] == "metrics" and e["step"] == 1)
    dense = loop.build_model(dense_profile)
    dense.load_state_dict(torch.load(ckpt, weights_only=False)["model"])
    data = LMData(moe_profile.data, moe_profile.seed, moe_profile.train.batch_size, 256)
    x, y = data.train_batch()
    _, loss = dense(x, y)
    assert abs(first["values"]["train/loss"] - float(loss)) < 1e-5
    # weights only: the new run counts its own steps from 1 under its own schedule
    assert [e["step"] for e in emitter.events if e["type"] == "started"] == [0]
