"""The TUI must start without torch: importing every TUI module leaves it unloaded."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

MODULES = ["moedesk.tui.app", "moedesk.tui.__main__", "moedesk.tui.screens.runs",
           "moedesk.tui.screens.monitor", "moedesk.tui.screens.compare",
           "moedesk.tui.screens.alerts", "moedesk.tui.screens.profiles",
           "moedesk.tui.screens.profile_picker", "moedesk.tui.screens.resume_dialog",
           "moedesk.tui.screens.confirm_stop", "moedesk.tui.screens.sample",
           "moedesk.tui.widgets.token_stream"]


def test_tui_never_imports_torch():
    code = ("import importlib, sys\n"
            f"for name in {MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            "print('torch' in sys.modules, 'moedesk.train' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_poller_and_models_need_no_textual():
    """The poll logic is plain Python: usable from scripts and benchmarks without a UI."""
    code = ("import sys\nimport moedesk.tui.poller, moedesk.profiles.edit, "
            "moedesk.tui.series\nprint('textual' in sys.modules, 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
