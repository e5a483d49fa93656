"""MoedeskCallback on real transformers MoE models built small from their configs (no
downloads), trained by `transformers.Trainer` on generated tokens."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers", reason="the hf extra: pip install moedesk[hf]")
import torch  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    Trainer,
    TrainingArguments,
)

from moedesk.integrations.transformers import MoedeskCallback, find_routers, metric_name  # noqa: E402
from moedesk.store import Reader  # noqa: E402

pytestmark = pytest.mark.slow

VOCAB, SEQ, BATCH, ACCUM, TOP_K = 64, 16, 4, 2, 2
TOKENS_PER_STEP = BATCH * ACCUM * SEQ
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              num_experts_per_tok=TOP_K, bos_token_id=None, eos_token_id=None, pad_token_id=None)
MODELS = {
    "mixtral": lambda: MixtralForCausalLM(MixtralConfig(**COMMON, num_local_experts=4)),
    "qwen3_moe": lambda: Qwen3MoeForCausalLM(Qwen3MoeConfig(**COMMON, num_experts=8,
                                                            moe_intermediate_size=32, head_dim=8)),
    "olmoe": lambda: OlmoeForCausalLM(OlmoeConfig(**COMMON, num_experts=8)),
    # a shared expert beside the routed ones: only the routed ones have a router
    "qwen2_moe": lambda: Qwen2MoeForCausalLM(Qwen2MoeConfig(
        **COMMON, num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=32)),
}
EXPERTS = {"mixtral": 4, "qwen3_moe": 8, "olmoe": 8, "qwen2_moe": 4}


class Tokens(torch.utils.data.Dataset):
    """Seeded random token windows; labels are the inputs (the model shifts them)."""

    def __init__(self, n: int, seed: int):
        self.x = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


@pytest.fixture(autouse=True)
def one_thread():
    # a loaded machine makes torch's thread pool spin: one thread is far faster for tiny models
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(model, home: Path, out: Path, steps: int, **extra):
    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH, gradient_accumulation_steps=ACCUM, logging_steps=1,
        eval_strategy="steps", eval_steps=10, save_strategy="no", report_to="none", use_cpu=True,
        learning_rate=1e-3, disable_tqdm=True, seed=0, **extra)
    callback = MoedeskCallback(home=str(home), name="hf", tags=["hf"])
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(steps * BATCH * ACCUM, 0),
                      eval_dataset=Tokens(2 * BATCH, 1), callbacks=[callback])
    trainer.train()
    return trainer


def only_run(home: Path):
    with Reader(home / "moedesk.db") as reader:
        (info,) = reader.runs()
        loads, _ = reader.expert_load_since(info.id, 0)
        metrics, _ = reader.metrics_since(info.id, 0)
        checkpoints = reader.checkpoints(info.id)
        alerts = reader.alerts(info.id)
    return info, loads, metrics, checkpoints, alerts


@pytest.mark.parametrize("family", sorted(MODELS))
def test_trainer_run_has_every_layers_load_per_step(home, tmp_path, family):
    model = MODELS[family]()
    assert [layer for _, _, layer in find_routers(model)] == [0, 1]
    train(model, home, tmp_path / "out", 20)
    info, loads, metrics, _, _ = only_run(home)
    assert info.status == "completed" and info.kind == "external" and info.total_steps == 20
    assert info.config["moe"] == {"num_experts": EXPERTS[family], "top_k": TOP_K}
    assert info.config["config"]["model_class"] == type(model).__name__
    steps = sorted({step for step, _, _ in loads})
    assert steps == list(range(1, 21))
    by_step = {(step, layer): counts for step, layer, counts in loads}
    for step in steps:
        for layer in (0, 1):
            counts = by_step[(step, layer)]
            assert len(counts) == EXPERTS[family]
            # both micro-batches, training forwards only (an evaluation ran at step 10)
            assert sum(counts) == TOKENS_PER_STEP * TOP_K
    names = {}
    for _, step, name, value in metrics:
        names.setdefault(name, []).append((step, value))
    assert [s for s, _ in names["train/loss"]] == list(range(1, 21))
    assert all(math.isfinite(v) for _, v in names["train/loss"])
    assert [s for s, _ in names["val/loss"]] == [10, 20] and "val/ppl" in names
    assert len(names["moe/imbalance"]) == 20 and len(names["moe/L1/max_token_fraction"]) == 20
    assert len(names["train/lr"]) == 20 and len(names["train/tokens_per_s"]) == 20


def test_gradient_checkpointing_does_not_count_twice(home, tmp_path):
    model = MODELS["olmoe"]()
    model.gradient_checkpointing_enable()  # every decoder layer's forward runs again in backward
    assert model.model.layers[0].gradient_checkpointing
    train(model, home, tmp_path / "out", 3)
    info, loads, _, _, _ = only_run(home)
    assert info.status == "completed" and len(loads) == 3 * 2
    assert all(sum(counts) == TOKENS_PER_STEP * TOP_K for _, _, counts in loads)


def test_collapsed_router_fires_and_the_trainer_stops_with_a_checkpoint(home, tmp_path):
    model = MODELS["mixtral"]()
    for name, param in model.named_parameters():
        if name.endswith("mlp.gate.weight"):  # equal logits: every token, the same 2 experts
            param.data.zero_()
            param.requires_grad_(False)
    trainer = train(model, home, tmp_path / "out", 60)
    stopped_at = trainer.state.global_step
    assert stopped_at < 60
    info, loads, _, checkpoints, alerts = only_run(home)
    assert info.status == "stopped" and "routing_collapse" in info.row["error"]
    collapse = [a for a in alerts if a["rule"] == "routing_collapse"]
    assert collapse and collapse[0]["severity"] == "critical" and collapse[0]["step"] < stopped_at
    folder = tmp_path / "out" / f"checkpoint-{stopped_at}"
    assert (folder / "model.safetensors").exists()
    assert [Path(c["path"]) for c in checkpoints] == [folder.resolve()]
    assert checkpoints[0]["step"] == stopped_at and checkpoints[0]["size"] > 0
    assert max(step for step, _, _ in loads) == stopped_at


def test_a_model_without_routers_warns_and_logs_curves(home, tmp_path):
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, bos_token_id=None, eos_token_id=None,
                         pad_token_id=None)
    with pytest.warns(UserWarning, match="no MoE router recognised in LlamaForCausalLM"):
        train(LlamaForCausalLM(config), home, tmp_path / "out", 3)
    info, loads, metrics, _, _ = only_run(home)
    assert info.status == "completed" and loads == []
    assert sum(name == "train/loss" for _, _, name, _ in metrics) == 3


def test_metric_names():
    assert [metric_name(k) for k in ("loss", "learning_rate", "eval_loss", "eval_accuracy",
                                     "train_runtime", "train_loss", "grad_norm")] == \
        ["train/loss", "train/lr", "val/loss", "val/accuracy", "train/runtime",
         "train/mean_loss", "train/grad_norm"]


WATCHED_TRAINER = """
import torch
from transformers import MixtralConfig, MixtralForCausalLM, Trainer, TrainingArguments
from moedesk.integrations.transformers import MoedeskCallback

torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.randint(0, 64, (4000, 16), generator=torch.Generator().manual_seed(0))
data = [{"input_ids": row, "labels": row} for row in x]
model = MixtralForCausalLM(MixtralConfig(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    num_local_experts=4, num_experts_per_tok=2, bos_token_id=None, eos_token_id=None,
    pad_token_id=None))
args = TrainingArguments(output_dir="out", max_steps=1000, per_device_train_batch_size=4,
                         logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                         disable_tqdm=True)
Trainer(model=model, args=args, train_dataset=data, callbacks=[MoedeskCallback()]).train()
print("train returned", flush=True)
"""


def test_moedesk_stop_ends_a_watched_trainer_with_a_checkpoint(home, tmp_path):
    """The three-line way: the callback in the script, `moedesk watch`, then `moedesk stop`:
    SIGTERM to the group is caught, the Trainer saves and returns, the run is stopped."""
    from tests.conftest import moedesk, wait_for

    (tmp_path / "train.py").write_text(WATCHED_TRAINER)
    started = moedesk("watch", "--home", str(home), "--cwd", str(tmp_path), "--detach",
                      "--name", "ft", "--", sys.executable, "train.py", check=True)
    run_id = int(started.stdout.split("watching run ")[1].split()[0])

    def info():
        with Reader(home / "moedesk.db") as reader:
            return reader.run(run_id)

    wait_for(lambda: info().last_step >= 3, timeout=300, what="a few Trainer steps")
    moedesk("stop", str(run_id), home=home, check=True)
    done = wait_for(lambda: (i := info()).status not in ("queued", "running") and i.row["ended_at"]
                    and i, timeout=300, what="the run to end")
    assert done.status == "stopped" and done.row["exit_code"] == 0, done.row["error"]
    with Reader(home / "moedesk.db") as reader:
        (checkpoint,) = reader.checkpoints(run_id)
    assert Path(checkpoint["path"]) == (tmp_path / "out" / f"checkpoint-{checkpoint['step']}")
    assert (Path(checkpoint["path"]) / "model.safetensors").exists()
    assert done.config["moe"] == {"num_experts": 4, "top_k": 2}
    assert "train returned" in (Path(done.row["run_dir"]) / "train.log").read_text()
