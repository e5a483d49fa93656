"""`moedesk run` for real, not at a terminal: plain progress lines with an ETA, and run
names made of markup (`[/]`, issue 12 item 10) through run, runs, show and logs."""

from __future__ import annotations

import re

import pytest

from tests.conftest import moedesk

TINY = "profiles/tiny_topk.toml"
SHORT = ["--set", "train.steps=40", "--set", "train.threads=1"]


@pytest.mark.slow
def test_a_run_named_like_markup_trains_and_lists(home, tmp_path):
    result = moedesk("run", TINY, *SHORT, "--name", "[/]", "--progress-every", "0.5", home=home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started run 1 ([/])" in result.stdout and "run 1 ([/]) completed at step 40/40" \
        in result.stdout
    # stdout is a pipe: plain timestamped lines, no bar, and the smoothed ETA once steps come
    lines = [ln for ln in result.stdout.splitlines() if re.match(r"\d\d:\d\d:\d\d \[/\] ", ln)]
    assert lines, result.stdout
    assert any(re.search(r"step \d+/40 \(\d+%\).* ms/step  ETA \d", ln) for ln in lines), lines
    assert "\x1b[" not in result.stdout and "━" not in result.stdout
    profile = tmp_path / "markup.toml"
    profile.write_text((TINY_TEXT := open(TINY).read()).replace('name = "tiny-topk"',
                                                               'name = "[/]"'))
    assert TINY_TEXT != profile.read_text()
    second = moedesk("run", str(profile), *SHORT, home=home)
    assert second.returncode == 0 and "started run 2 ([/]-2)" in second.stdout, second.stderr
    for args, want in ((("runs",), "[/]-2"), (("show", "[/]"), "completed"),
                       (("show",), "run 2 [/]-2"), (("logs", "[/]-2"), "Step")):
        shown = moedesk(*args, home=home)
        assert shown.returncode == 0 and want in shown.stdout, (args, shown.stdout, shown.stderr)
        assert "Traceback" not in shown.stderr
    twice = moedesk("run", TINY, *SHORT, "--name", "[/]", home=home)
    assert twice.returncode == 2 and "run name '[/]' is taken by run 1" in twice.stderr
