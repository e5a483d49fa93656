"""Training on several processes: the process group, ranks, reductions, checks and the
checkpoint's parts (docs/distributed.md).

`DistContext` is what the LM loop passes around. `DistContext.single()` is one process:
every method is then the identity or a no-op, so the loop reads the same either way.
Under torchrun (`WORLD_SIZE` > 1) `DistContext.from_env` joins the process group: gloo
for CPU tensors, plus NCCL for CUDA tensors when every local rank has a GPU of its own,
with `train.dist_timeout` on every collective (a dead peer cannot hang the others); it
sets the threads per rank (`runner.torchrun.threads_per_rank`), asks the kernel to
SIGKILL this rank when torchrun's agent dies, and checks every rank trains the same
profile.

Data parallelism is DDP (`torch.nn.parallel.DistributedDataParallel`, `wrap`): each rank
holds the whole model (less the experts it does not own under expert parallelism,
`expert_parallel.py`), reads its own slice of every global micro-batch (`data.py`), and
DDP averages the gradients in buckets that overlap the backward. What else the loop needs
from the other ranks is here:
  - `reduce_expert_counts`: each MoE layer's `tokens_per_expert_E` summed over the ranks
    before the telemetry reads it and the balancing bias moves (b stays identical)
  - `clip_grad_norm_`: the global gradient norm, each expert shard counted once
  - `any_rank`: the stop flag, agreed once per step (a CPU tensor: no GPU sync), so every
    rank stops after the same step
  - `reduce_for_log`: one all-reduce per logged step for the loop's host vector
  - `broadcast_object` / `load_on_main`: rank 0's arguments and resume state for all
  - `checkpoint_parts`: the full model and optimizer state on rank 0 (expert shards
    gathered), every rank's own RNG and telemetry window, after checking that the
    replicated weights and buffers are bit-identical on every rank
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from moedesk.profiles import profile_to_dict
from moedesk.profiles.schema import Profile
from moedesk.runner.torchrun import LOST_PEERS_EXIT, threads_per_rank
from moedesk.train.checkpoint import CheckpointError, load_checkpoint
from moedesk.train.expert_parallel import ExpertDispatcher
from moedesk.train.moe import MoEFFN

# a rank other than 0 that resumes at another world size draws its RNG from here
RANK_SEED_STRIDE = 1_000_003


class DistStartError(Exception):
    """This rank cannot join the others; the message says why."""


def torchrun_env() -> dict[str, int] | None:
    """Rank, world and node numbers torchrun gives each rank; None outside torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    keys = {"rank": "RANK", "world": "WORLD_SIZE", "local_rank": "LOCAL_RANK",
            "local_world": "LOCAL_WORLD_SIZE", "node_rank": "GROUP_RANK"}
    return {name: int(os.environ.get(key, "0")) for name, key in keys.items()}


def die_with_parent() -> None:
    """SIGKILL this process when its parent (torchrun's agent) dies, however it dies: a
    `moedesk stop --kill` or an OOM kill of the agent must not leave ranks behind."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the agent died before the prctl
        os._exit(LOST_PEERS_EXIT)


def profile_digest(profile: Profile) -> str:
    """What every rank must agree on (not names, paths or health rules)."""
    data = profile_to_dict(profile)
    keep = {k: data[k] for k in ("kind", "seed", "model", "moe", "train")}
    keep["data"] = {k: v for k, v in data["data"].items() if k != "path"}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


def tensor_digest(t: Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().flatten().view(torch.uint8)
                          .numpy().tobytes()).hexdigest()


class DistContext:
    """This process's place among the ranks (one process: rank 0 of 1)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, local_world: int = 1,
                 node_rank: int = 0, device: torch.device | None = None):
        self.rank, self.world = rank, world
        self.local_rank, self.local_world, self.node_rank = local_rank, local_world, node_rank
        self.device = device  # None: one process, the loop resolves train.device
        self.experts = None  # the ExpertDispatcher when the model has MoE layers

    @classmethod
    def single(cls) -> DistContext:
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def describe(self) -> str:
        if not self.enabled:
            return "1 process"
        nodes = self.world // max(self.local_world, 1)
        backend = dist.get_backend() if dist.is_initialized() else "?"
        text = (f"rank {self.rank} of {self.world} ({self.local_world} per node x {nodes} "
                f"node(s), node {self.node_rank}, {backend}, {torch.get_num_threads()} "
                "thread(s))")
        if self.experts is not None and self.experts.ep > 1:
            owned, rows = self.experts.owned(), self.experts.expert_rows()
            text += (f"; expert parallel {self.experts.ep}: holds experts {owned.start}.."
                     f"{owned.stop - 1} of every MoE layer (weights of "
                     f"{', '.join(map(str, sorted(rows)))} experts per layer)")
        return text

    # ---- set up and tear down ----------------------------------------------------------
    @classmethod
    def from_env(cls, profile: Profile) -> DistContext:
        """Join torchrun's process group; one process outside torchrun."""
        env = torchrun_env()
        if env is None:
            return cls.single()
        die_with_parent()
        ctx = cls(**env, device=cls._pick_device(profile, env["local_rank"], env["local_world"]))
        torch.set_num_threads(threads_per_rank(profile))
        backend = "cpu:gloo,cuda:nccl" if ctx.device.type == "cuda" else "gloo"
        try:
            if ctx.device.type == "cuda":
                torch.cuda.set_device(ctx.device)
            dist.init_process_group(backend, timeout=timedelta(seconds=profile.train.dist_timeout))
            digests = [None] * ctx.world
            dist.all_gather_object(digests, profile_digest(profile))
        except (RuntimeError, ValueError) as exc:
            raise DistStartError(f"rank {ctx.rank} cannot join the process group: {exc}") from None
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if odd:
            raise DistStartError(f"ranks {odd} train another profile than rank 0 (model, moe, "
                                 "train, data or seed differ): start every node with the same "
                                 "profile and --set overrides")
        return ctx

    @staticmethod
    def _pick_device(profile: Profile, local_rank: int, local_world: int) -> torch.device:
        want = profile.train.device
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if want in ("auto", "cuda") and gpus >= local_world:
            return torch.device("cuda", local_rank)
        if want == "cuda":
            raise DistStartError(f"train.device = 'cuda' with train.nproc_per_node = "
                                 f"{local_world}: this node has {gpus} CUDA device(s) and every "
                                 "rank needs its own")
        return torch.device("cpu")

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def reseed(self, seed: int, step: int = 0) -> None:
        """Ranks other than 0 draw dropout and noise from their own stream (rank 0 keeps
        the one-process stream); call after the model is built from the shared seed."""
        if self.rank > 0:
            torch.manual_seed(seed + RANK_SEED_STRIDE * self.rank + step)

    # ---- the model -----------------------------------------------------------------------
    def shard(self, model: nn.Module, expert_parallel: int) -> None:
        """With several ranks, give the MoE layers their dispatcher and keep only this
        rank's experts (all of them when expert_parallel is 1)."""
        ffns = [m for m in model.modules() if isinstance(m, MoEFFN)]
        if not self.enabled or not ffns:
            return
        self.experts = ExpertDispatcher(self.rank, self.world, expert_parallel,
                                        ffns[0].num_experts)
        self.experts.attach(model)

    def local_model_state(self, state: dict) -> dict:
        """A whole-model state cut to this rank's experts (unchanged without shards)."""
        return self.experts.local_model_state(state) if self.experts is not None else state

    def local_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> dict:
        if self.experts is None:
            return state
        return self.experts.local_optimizer_state(optimizer, state)

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around the model (the experts this rank owns are left out); the model itself
        with one process."""
        if not self.enabled:
            return model
        ignore = sorted(self.experts.expert_keys) if self.experts is not None else []
        if ignore:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # the buffers (balancing bias, counts) are kept identical by reduce_expert_counts;
        # DDP's per-forward sync would overwrite each rank's counts with rank 0's (the
        # sync at construction is harmless: every rank built the same model)
        return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)

    def sync(self, net: nn.Module, last: bool):
        """Context for one micro-batch's forward and backward: gradients are averaged only
        on the last micro-batch of an optimizer step."""
        if isinstance(net, DistributedDataParallel) and not last:
            return net.no_sync()
        return contextlib.nullcontext()

    def finish_grads(self) -> None:
        if self.experts is not None:
            self.experts.finish_grads()

    def reduce_expert_counts(self, ffns: list) -> None:
        if not self.enabled or not ffns:
            return
        counts_LE = torch.stack([f.tokens_per_expert_E for f in ffns])
        dist.all_reduce(counts_LE)
        for ffn, counts_E in zip(ffns, counts_LE, strict=True):
            ffn.tokens_per_expert_E.copy_(counts_E)

    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> Tensor:
        """The global gradient norm (clipped to max_norm when > 0), every expert shard
        counted once; with one process torch's own clip_grad_norm_/get_total_norm."""
        sharded = self.experts.sharded_params() if self.experts is not None else []
        if not sharded:
            if max_norm > 0:
                return torch.nn.utils.clip_grad_norm_(params, max_norm)
            return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        own = {id(p) for p in sharded}
        shared = [p.grad for p in params if p.grad is not None and id(p) not in own]
        shard_sq = torch.nn.utils.get_total_norm([p.grad for p in sharded]).square()
        dist.all_reduce(shard_sq, group=self.experts.group)
        total = (torch.nn.utils.get_total_norm(shared).square() + shard_sq).sqrt()
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total

    # ---- agreement and reductions -----------------------------------------------------------
    def any_rank(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])  # CPU: gloo, no device sync
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def reduce_for_log(self, mean_V: Tensor, sum_V: Tensor) -> tuple[Tensor, Tensor]:
        """One all-reduce for a logged step: mean_V averaged and sum_V summed over ranks
        (both float64 on the device)."""
        if not self.enabled:
            return mean_V, sum_V
        both = torch.cat([mean_V, sum_V])
        dist.all_reduce(both)
        return both[:mean_V.numel()] / self.world, both[mean_V.numel():]

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj) -> list | None:
        if not self.enabled:
            return [obj]
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    # ---- checkpoints ----------------------------------------------------------------------
    def load_on_main(self, resume: Path | None) -> dict | None:
        """Rank 0 reads and verifies the checkpoint it was given and sends it to every rank
        (the other nodes need no copy of the file); CheckpointError on every rank when
        it cannot."""
        state, error = None, None
        if self.is_main and resume is not None:
            try:
                state = load_checkpoint(Path(resume))
            except CheckpointError as exc:
                error = str(exc)
        state, error = self.broadcast_object((state, error))
        if error:
            raise CheckpointError(error)
        return state

    def rank_part(self, state: dict) -> dict | None:
        """This rank's own part of a checkpoint written at this world size; None when the
        checkpoint came from another world size (rank 0 then uses the top-level parts)."""
        ranks = state.get("ranks")
        if ranks and len(ranks) == self.world:
            return ranks[self.rank]
        return None

    def checkpoint_parts(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                         local: dict) -> dict | None:
        """On rank 0: the model and optimizer state of the whole model, and with several
        ranks the world and each rank's `local` part; None on the other ranks. Raises
        CheckpointError on every rank when the replicas have drifted apart."""
        if not self.enabled:
            return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        drifted = self._replicas_differ(model)
        if drifted:
            raise CheckpointError(f"replicated state differs between ranks ({drifted}); the "
                                  "ranks no longer train the same model")
        experts = self.experts
        model_state = experts.full_model_state(model) if experts else model.state_dict()
        optim_state = experts.full_optimizer_state(optimizer) if experts else optimizer.state_dict()
        ranks = self.gather_objects(local)
        if not self.is_main:
            return None
        ep = experts.ep if experts is not None else 1
        return {"model": model_state, "optimizer": optim_state, "ranks": ranks,
                "world": {"size": self.world, "expert_parallel": ep}}

    def _replicas_differ(self, model: nn.Module) -> str:
        """Names of replicated tensors whose bytes differ from rank 0's ("" when none)."""
        own = self.experts.expert_keys if self.experts is not None else set()
        digests = {name: tensor_digest(t) for name, t in model.state_dict().items()
                   if name not in own}
        gathered = self.gather_objects(digests)
        bad = ""
        if self.is_main:
            odd = sorted({n for d in gathered[1:] for n in d if d[n] != digests.get(n)})
            bad = ", ".join(odd[:3]) + (f" and {len(odd) - 3} more" if len(odd) > 3 else "")
        return self.broadcast_object(bad)
