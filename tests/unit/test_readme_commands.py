"""The README's first two commands are what they claim: a shipped profile that validates,
and the very test command CI runs (.ci/run)."""

from __future__ import annotations

import re

from moedesk.profiles import load_profile
from tests.conftest import REPO


def _commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"^    (python3 -m venv .*)$", text, re.M)


def test_the_first_command_trains_the_quickstart_profile():
    first = _commands()[0]
    profile = re.search(r"moedesk run (\S+)$", first).group(1)
    loaded = load_profile(REPO / profile)
    assert loaded.kind == "topk" and loaded.moe.num_experts >= 8 and loaded.train.threads == 1
    assert loaded.train.eval_every and loaded.train.steps // loaded.train.eval_every >= 3


def test_the_test_command_is_the_one_ci_runs():
    readme = _commands()[1].split("&& ")[-1]
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1].split("&& ")[-1]
    assert readme == ci and " -n " in readme
