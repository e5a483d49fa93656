"""How a run's trainer is started, and how a torchrun launch ended: the runner's half of
distributed training (docs/distributed.md). No torch import.

`trainer_command` is the one place that builds the trainer's command line: one process
is `python -m moedesk.train RUN_DIR`; more than one (`train.nproc_per_node` x
`train.nnodes` > 1) is the same module under PyTorch's own launcher,
`python -m torch.distributed.run ... -m moedesk.train RUN_DIR`, with no restarts (a
failed rank fails the run), a standalone rendezvous on one node and a static one at
`train.rdzv_endpoint` across nodes (hosted by node 0, which holds ranks 0..nproc-1).
torchrun's agent is the process the supervisor starts and signals: a SIGTERM to it
reaches every local rank (its shutdown forwards the signal and waits
`train.dist_timeout` seconds before SIGKILL), and the ranks agree on the step to stop
at. A SIGKILL to it takes the ranks with it (each rank asks the kernel for SIGKILL when
its parent dies, `train/distributed.py`).

`read_failures` / `describe_failure` read torchrun's end-of-run report from the log
("Root Cause (first observed failure)" and the other failures) so a run that lost a
rank is recorded with the failing rank, its exit, and that rank's last log lines.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from moedesk.profiles.dist_rules import world_size
from moedesk.profiles.schema import Profile

# exit code of a rank that lost contact with the others (a peer died, a collective timed
# out): never the root cause when another rank failed for a reason of its own
LOST_PEERS_EXIT = 75
# every rank's log line starts with this when the run has more than one rank
RANK_PREFIX = "[rank {}] "
RDZV_ID = "moedesk"  # the static rendezvous's store prefix


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_rank(profile: Profile, cpus: int | None = None) -> int:
    """torch threads each rank uses: train.threads when set, else this node's CPUs shared
    out between its ranks (a 2-core machine running 2 ranks gives each 1)."""
    if profile.train.threads > 0:
        return profile.train.threads
    cpus = available_cpus() if cpus is None else cpus
    return max(1, cpus // profile.train.nproc_per_node)


def trainer_command(profile: Profile, run_dir: Path, node_rank: int = 0,
                    python: str = sys.executable) -> list[str]:
    """The trainer's command line; the caller appends `--resume CKPT` / `--stop-at N`."""
    trainer = ["-m", "moedesk.train", str(run_dir)]
    if world_size(profile) == 1:
        return [python, *trainer]
    tc = profile.train
    timeout = int(tc.dist_timeout)
    cmd = [python, "-m", "torch.distributed.run", f"--nproc-per-node={tc.nproc_per_node}",
           f"--nnodes={tc.nnodes}", "--max-restarts=0", f"--shutdown-timeout={timeout}"]
    if tc.nnodes == 1:
        cmd.append("--standalone")  # a free local port, nothing to configure
    else:
        # the static rendezvous keeps --node-rank (c10d would number the nodes in the
        # order they arrive, and node 0 must hold rank 0, the one that reports): node 0
        # hosts its store, so a port in use fails at once; the others wait up to the
        # timeout for node 0 to come up
        cmd += [f"--node-rank={node_rank}", "--rdzv-backend=static",
                f"--rdzv-endpoint={tc.rdzv_endpoint}", f"--rdzv-id={RDZV_ID}",
                f"--rdzv-conf=timeout={timeout}"]
    return cmd + trainer


def launch_env(profile: Profile) -> dict[str, str]:
    """Environment additions for the trainer: OpenMP threads per rank (torchrun would
    otherwise set 1 and print a banner about it)."""
    if world_size(profile) == 1:
        return {}
    return {"OMP_NUM_THREADS": str(threads_per_rank(profile))}


# ---- how a torchrun launch ended ---------------------------------------------------------
@dataclass
class RankFailure:
    rank: int
    local_rank: int
    exitcode: int
    host: str
    root_cause: bool

    @property
    def signal_name(self) -> str | None:
        if self.exitcode < 0 and -self.exitcode in signal.valid_signals():
            return signal.Signals(-self.exitcode).name
        return None

    def describe(self) -> str:
        where = f"rank {self.rank} (local rank {self.local_rank} on {self.host})"
        if self.signal_name:
            return f"{where} was killed by {self.signal_name}"
        if self.exitcode == LOST_PEERS_EXIT:
            return f"{where} lost contact with the other ranks"
        return f"{where} exited with code {self.exitcode}"


_BLOCK = re.compile(r"host\s*:\s*(?P<host>\S+)\s*\n\s*rank\s*:\s*(?P<rank>-?\d+)\s*\(local_rank:"
                    r"\s*(?P<local>-?\d+)\)\s*\n\s*exitcode\s*:\s*(?P<code>-?\d+)")


def read_failures(log_text: str) -> list[RankFailure]:
    """The failed ranks torchrun's last report lists, root cause first; [] when none."""
    start = log_text.rfind("Failures:")
    if start < 0:
        start = log_text.rfind("Root Cause (first observed failure)")
    if start < 0:
        return []
    report = log_text[start:]
    root_at = report.find("Root Cause")
    out = [RankFailure(int(m["rank"]), int(m["local"]), int(m["code"]), m["host"],
                       root_at >= 0 and m.start() > root_at)
           for m in _BLOCK.finditer(report)]
    return sorted(out, key=lambda f: not f.root_cause)


def failing_rank(failures: list[RankFailure]) -> RankFailure | None:
    """The rank that brought the run down: a rank that failed for a reason of its own
    (killed by anything but the SIGTERM torchrun sends the survivors, or exited non-zero
    but not for lost peers), torchrun's root cause first; else the root cause."""
    def own(f: RankFailure) -> bool:
        return f.exitcode not in (-signal.SIGTERM, LOST_PEERS_EXIT)
    for failure in failures:
        if own(failure):
            return failure
    return failures[0] if failures else None


def rank_lines(log_text: str, rank: int, lines: int) -> str:
    """The last `lines` log lines rank `rank` wrote (its lines carry RANK_PREFIX)."""
    prefix = RANK_PREFIX.format(rank)
    mine = [line for line in log_text.splitlines() if prefix in line]
    return "\n".join(mine[-lines:])


_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Timeout)\w*: ")


def last_errors(log_text: str, lines: int = 80) -> str:
    """The exception lines of the log's last traceback chain ("Cause: ...; Error: ..."),
    short names, "" when there are none."""
    found: list[str] = []
    for line in log_text.splitlines()[-lines:]:
        line = line.strip()
        if _EXCEPTION_LINE.match(line):
            name, _, message = line.partition(": ")
            short = f"{name.rsplit('.', 1)[-1]}: {message}"
            if short not in found:
                found.append(short)
    return "; ".join(found)


def agent_got_signal(log_text: str) -> bool:
    """torchrun's agent was signalled (it forwards the signal to the ranks, waits for them,
    then re-raises it and exits 1)."""
    return "SignalException" in log_text[-8000:]


def forwarded_stop(exit_code: int, finished: dict | None, log_text: str) -> bool:
    """The agent's exit 1 after a stop it forwarded, the ranks having finished: a clean
    stop, not a failure."""
    return (exit_code != 0 and finished is not None
            and finished.get("status") in ("stopped", "completed") and agent_got_signal(log_text))


def launch_outcome(profile: Profile, finished: dict | None, exit_code: int, log_path: Path
                   ) -> tuple[int, tuple[str, str] | None]:
    """(exit code, (status, error) or None) of a trainer launch, as the supervisor records
    it: torchrun's own exit after a stop it forwarded counts as 0, and a launch that lost
    a rank is described by the rank that failed (None: the usual outcome applies)."""
    if world_size(profile) == 1 or exit_code == 0:
        return exit_code, None
    text = read_log_end(log_path)
    if forwarded_stop(exit_code, finished, text):
        return 0, None
    failure = describe_failure(text)
    if failure is None:
        return exit_code, None
    # rank 0 said why it failed: that stands, unless another rank was killed under it
    if finished is not None and finished.get("status") == "failed" and failure[0] != "crashed":
        return exit_code, None
    return exit_code, failure


# the line a supervisor writes to train.log before each launch (supervise.py, node.py)
LAUNCH_MARK = "--- moedesk "


def read_log_end(path: Path, size: int = 65536) -> str:
    """The end of a log, from the last launch's header on (an earlier launch's torchrun
    report must not describe this one)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    start = text.rfind("\n" + LAUNCH_MARK)
    return text[start + 1:] if start >= 0 else text


def describe_failure(log_text: str, lines: int = 20) -> tuple[str, str] | None:
    """(status, error) of a torchrun launch that lost a rank or never got going; None when
    the log holds no torchrun failure report (the caller's usual outcome applies)."""
    failures = read_failures(log_text)
    culprit = failing_rank(failures)
    if culprit is None:
        errors = last_errors(log_text)
        if "Rendezvous" in errors or "DistNetworkError" in errors or "DistStoreError" in errors:
            return "failed", f"the ranks could not meet at the rendezvous: {errors}{_hint(errors)}"
        return None
    status = "crashed" if culprit.signal_name or culprit.exitcode == LOST_PEERS_EXIT else "failed"
    others = [f.describe() for f in failures if f is not culprit]
    text = culprit.describe() + "; torchrun stopped the other ranks"
    if others:
        text += " (" + "; ".join(others) + ")"
    own_lines = rank_lines(log_text, culprit.rank, lines)
    if not own_lines:
        own_lines = (f"(no log lines of rank {culprit.rank} here: it ran on {culprit.host}; "
                     "see that node's train.log)")
    return status, f"{text}\nlast log lines of rank {culprit.rank}:\n{own_lines}"


def _hint(errors: str) -> str:
    if "EADDRINUSE" in errors or "address already in use" in errors:
        return ("\nthe rendezvous port is in use on node 0: pick a free one with "
                "--rdzv-endpoint HOST:PORT (the same on every node)")
    if "imed out" in errors or "Timeout" in errors:
        return ("\nnot every node joined within train.dist_timeout: start `moedesk run "
                "PROFILE --nnodes N --node-rank R --rdzv-endpoint HOST:PORT` on each node, "
                "with the same endpoint")
    if "refused" in errors or "resolve" in errors or "Name or service" in errors:
        return "\nnode 0 cannot be reached at --rdzv-endpoint: check its address and port"
    return ""
