"""Distributed training's single-process parts: profile rules, the trainer command, threads
per rank, the data shards, the batch checksum across ranks, the expert regrouping, and
torchrun's failure report read back from the log. The real multi-process runs are in
tests/integration/test_distributed.py and test_distributed_runs.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moedesk.profiles import ProfileError, load_profile
from moedesk.runner import torchrun
from moedesk.train.analysis import HASH_MODULUS, batch_fingerprint
from moedesk.train.data import LMData
from moedesk.train.expert_parallel import regroup_index

PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def problems(profile: str, **overrides) -> list[str]:
    try:
        load_profile(PROFILES / profile, overrides)
    except ProfileError as exc:
        return exc.lines
    return []


def test_ternary_is_refused_on_several_processes_with_the_kind_named():
    lines = problems("tiny_ternary.toml", **{"train.nproc_per_node": 2})
    assert len(lines) == 1
    assert "train.nproc_per_node: got 2; the ternary kind trains in one process" in lines[0]
    assert "tiny_ternary.toml" in lines[0]
    lines = problems("tiny_ternary.toml", **{"train.nnodes": 2, "train.rdzv_endpoint": "h:1"})
    assert any(line.split(": ", 1)[1].startswith("train.nnodes: got 2") for line in lines)


@pytest.mark.parametrize("overrides,key,says", [
    ({"train.nnodes": 2}, "train.rdzv_endpoint", "needs the HOST:PORT"),
    ({"train.nnodes": 2, "train.rdzv_endpoint": "nohost"}, "train.rdzv_endpoint", "HOST:PORT"),
    ({"train.rdzv_endpoint": "h:70000"}, "train.rdzv_endpoint", "1..65535"),
    ({"train.nproc_per_node": 2, "moe.expert_parallel": 3}, "moe.expert_parallel",
     "must divide moe.num_experts (4)"),
    ({"train.nproc_per_node": 1, "moe.expert_parallel": 2}, "moe.expert_parallel",
     "must divide the world size 1"),
    ({"train.nproc_per_node": 2, "moe.expert_parallel": 2, "moe.dispatch": "eager"},
     "moe.dispatch", "use 'sorted'"),
    ({"train.nproc_per_node": 0}, "train.nproc_per_node", ">= 1"),
])
def test_bad_combinations_name_the_key(overrides, key, says):
    lines = problems("tiny_topk.toml", **overrides)
    assert len(lines) == 1, lines
    assert f": {key}: " in lines[0] and says in lines[0], lines[0]


def test_expert_parallel_needs_the_topk_kind():
    lines = problems("tiny_dense.toml", **{"train.nproc_per_node": 2, "moe.expert_parallel": 2})
    assert len(lines) == 1 and "kind 'dense' has none" in lines[0]


def test_good_combinations_validate():
    assert problems("tiny_topk.toml", **{"train.nproc_per_node": 2, "moe.expert_parallel": 2}) == []
    assert problems("tiny_topk.toml", **{"train.nproc_per_node": 2, "train.nnodes": 2,
                                         "train.rdzv_endpoint": "10.0.0.1:29500",
                                         "moe.expert_parallel": 4}) == []


def test_the_trainer_command_for_one_process_several_and_several_nodes(tmp_path):
    one = load_profile(PROFILES / "tiny_dense.toml")
    assert torchrun.trainer_command(one, tmp_path, python="py") == [
        "py", "-m", "moedesk.train", str(tmp_path)]
    assert torchrun.launch_env(one) == {}
    local = load_profile(PROFILES / "tiny_dense.toml", {"train.nproc_per_node": 2})
    cmd = torchrun.trainer_command(local, tmp_path, python="py")
    assert cmd[:3] == ["py", "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc-per-node=2" in cmd and "--max-restarts=0" in cmd
    assert cmd[-3:] == ["-m", "moedesk.train", str(tmp_path)]
    nodes = load_profile(PROFILES / "tiny_dense.toml", {
        "train.nnodes": 3, "train.rdzv_endpoint": "10.1.2.3:29400", "train.dist_timeout": 30})
    cmd = torchrun.trainer_command(nodes, tmp_path, node_rank=2, python="py")
    assert "--standalone" not in cmd
    # the static rendezvous keeps the node rank (node 0 must hold rank 0)
    assert {"--nnodes=3", "--node-rank=2", "--rdzv-backend=static",
            "--rdzv-endpoint=10.1.2.3:29400", "--rdzv-conf=timeout=30",
            "--shutdown-timeout=30"} <= set(cmd)


def test_threads_per_rank_share_the_cpus_unless_set():
    two = load_profile(PROFILES / "tiny_dense.toml", {"train.nproc_per_node": 2,
                                                      "train.threads": 0})
    assert torchrun.threads_per_rank(two, cpus=2) == 1
    assert torchrun.threads_per_rank(two, cpus=16) == 8
    assert torchrun.threads_per_rank(two, cpus=1) == 1
    pinned = load_profile(PROFILES / "tiny_dense.toml", {"train.nproc_per_node": 2,
                                                         "train.threads": 3})
    assert torchrun.threads_per_rank(pinned, cpus=2) == 3
    assert torchrun.launch_env(two)["OMP_NUM_THREADS"] == str(torchrun.threads_per_rank(two))


def test_rank_shards_are_disjoint_slices_of_the_one_process_batch():
    profile = load_profile(PROFILES / "tiny_dense.toml", {"data.grammar_sentences": 300})
    whole = LMData(profile.data, 7, 6, 256)
    shards = [LMData(profile.data, 7, 3, 256, rank=r, world=2) for r in range(2)]
    for _ in range(3):  # every draw, not just the first
        starts = whole.sample_starts()
        parts = [s.sample_starts() for s in shards]
        assert torch.equal(torch.cat(parts), starts)
    # every rank's generator moved exactly as the one process's did
    assert all(torch.equal(s.generator.get_state(), whole.generator.get_state()) for s in shards)
    assert shards[1].position_offset == 3 * profile.data.seq_len
    # validation spans the global micro-batch on every rank
    vals = [b[0] for b in whole.val_batches(2)], [b[0] for b in shards[1].val_batches(2)]
    assert all(torch.equal(a, b) for a, b in zip(*vals, strict=True))


def test_rank_checksums_add_up_to_the_whole_batch_checksum():
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, 256, (6, 16), generator=gen) for _ in range(3)]  # 3 micro
    whole = None
    for b in batches:
        whole = batch_fingerprint(b, whole)
    ranks = []
    for r in range(3):
        chained = None
        for b in batches:
            chained = batch_fingerprint(b[2 * r:2 * r + 2], chained, offset=2 * r * 16)
        ranks.append(int(chained))
    assert sum(ranks) % HASH_MODULUS == int(whole)
    swapped = [batch_fingerprint(b[[1, 0] + list(range(2, 6))]) for b in batches[:1]]
    assert int(swapped[0]) != int(batch_fingerprint(batches[0]))


def test_regroup_index_orders_received_rows_by_local_expert():
    # 3 source ranks x 2 local experts; recv_PE[s, e] rows from source s for expert e,
    # arriving source by source, expert by expert
    recv_PE = torch.tensor([[2, 0], [1, 3], [0, 2]])
    labels = [(s, e) for s in range(3) for e in range(2) for _ in range(int(recv_PE[s, e]))]
    order = regroup_index(recv_PE).tolist()
    regrouped = [labels[i] for i in order]
    assert regrouped == sorted(labels, key=lambda se: (se[1], se[0]))
    assert sorted(order) == list(range(len(labels)))  # a permutation
    assert regroup_index(torch.zeros(2, 2, dtype=torch.long)).numel() == 0


# torchrun's end-of-run report (torch.distributed.elastic's ChildFailedError), as it
# reaches train.log when rank 1 is SIGKILLed and the agent SIGTERMs rank 0
REPORT = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
moedesk.train FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-01-01_00:00:01
  host      : box
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 11)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 11
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-01-01_00:00:00
  host      : box
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 12)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 12
============================================================
"""


def test_a_killed_rank_is_named_with_its_own_log_lines():
    log = ("[rank 0] rank 0 of 2\n[rank 1] rank 1 of 2\n[rank 1] step 3\n"
           "[rank 0] step 3\n" + REPORT)
    failures = torchrun.read_failures(log)
    assert [(f.rank, f.exitcode, f.root_cause) for f in failures] == [(1, -9, True),
                                                                     (0, -15, False)]
    status, error = torchrun.describe_failure(log)
    assert status == "crashed"
    assert error.startswith("rank 1 (local rank 1 on box) was killed by SIGKILL; torchrun "
                            "stopped the other ranks (rank 0 (local rank 0 on box) was "
                            "killed by SIGTERM)")
    assert error.endswith("last log lines of rank 1:\n[rank 1] rank 1 of 2\n[rank 1] step 3")
    # a rank's own failure outranks torchrun's root cause when that was a lost peer
    lost = REPORT.replace("exitcode  : -9", f"exitcode  : {torchrun.LOST_PEERS_EXIT}").replace(
        "exitcode  : -15", "exitcode  : 1")
    culprit = torchrun.failing_rank(torchrun.read_failures(lost))
    assert (culprit.rank, culprit.exitcode) == (0, 1)
    assert torchrun.describe_failure("[rank 0] step 1\nall fine\n") is None


def test_the_log_end_is_the_last_launch_only(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(f"{torchrun.LAUNCH_MARK}supervisor 1: torchrun ...\n{REPORT}"
                   f"{torchrun.LAUNCH_MARK}supervisor 2: torchrun ...\n[rank 0] step 4\n")
    end = torchrun.read_log_end(log)
    assert end.startswith(f"{torchrun.LAUNCH_MARK}supervisor 2") and "Root Cause" not in end
    assert torchrun.describe_failure(end) is None  # the first launch's crash is history
    assert torchrun.read_log_end(tmp_path / "missing.log") == ""


def test_a_port_in_use_at_the_rendezvous_gets_a_hint():
    log = ("torch.distributed.DistNetworkError: The server socket has failed to listen on "
           "any local network address. port: 29500, useIpv6: false, code: -98, name: "
           "EADDRINUSE, message: address already in use\n")
    status, error = torchrun.describe_failure(log)
    assert status == "failed" and error.startswith("the ranks could not meet at the rendezvous")
    assert "EADDRINUSE" in error and "--rdzv-endpoint HOST:PORT" in error
