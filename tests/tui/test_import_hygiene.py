"""The TUI must start without torch: importing every TUI module leaves it unloaded."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_tui_never_imports_torch():
    """Every module of the package (screens are imported lazily by the app: walk them all)."""
    code = ("import importlib, pkgutil, sys, moedesk.tui\n"
            "for m in pkgutil.walk_packages(moedesk.tui.__path__, 'moedesk.tui.'):\n"
            "    importlib.import_module(m.name)\n"
            "print('moedesk.tui.screens.routing' in sys.modules,"
            " 'torch' in sys.modules, 'moedesk.train' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "False"]


def test_poller_and_models_need_no_textual():
    """The poll logic is plain Python: usable from scripts and benchmarks without a UI."""
    code = ("import sys\nimport moedesk.tui.poller, moedesk.profiles.edit, "
            "moedesk.tui.series\nprint('textual' in sys.modules, 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
