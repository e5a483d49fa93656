"""The architecture's import boundaries, checked in fresh interpreters (design.md table)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# part -> modules it may not pull in (directly or transitively)
FORBIDDEN = {
    "moedesk.profiles": ["torch", "textual"],
    "moedesk.store": ["torch", "textual"],
    "moedesk.health": ["torch", "textual"],
    "moedesk.health.engine": ["torch", "textual"],
    "moedesk.runner.launch": ["torch", "textual"],
    "moedesk.runner.supervise": ["torch", "textual"],
    "moedesk.runner.checkpoints": ["torch", "textual"],
    "moedesk.stats": ["torch", "textual", "numpy"],
    "moedesk.stats.load": ["torch", "textual", "numpy"],
    "moedesk.stats.names": ["torch", "textual", "numpy"],
    "moedesk.stats.routing": ["torch", "textual", "numpy"],
    "moedesk.profiles.sizing": ["torch", "textual"],
    "moedesk.cli": ["torch", "textual"],
    "moedesk.data.manifest": ["torch", "textual", "numpy"],
    "moedesk.data.tokenizer": ["torch", "textual", "numpy", "tokenizers"],
    "moedesk.data.prepare": ["torch", "textual"],
    "moedesk.runner.init_from": ["torch", "textual"],
    "moedesk.tui.app": ["torch"],
    "moedesk.train.loop": ["textual", "sqlite3", "sqlite_utils", "moedesk.store"],
    "moedesk.train.moe": ["textual", "sqlite3", "sqlite_utils", "moedesk.store"],
    "moedesk.train.moe_telemetry": ["textual", "sqlite3", "sqlite_utils", "moedesk.store"],
    "moedesk.train.ternary.loop": ["textual", "sqlite3", "sqlite_utils", "moedesk.store"],
}


def _module_exists(name: str) -> bool:
    path = REPO / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_part_does_not_import_forbidden_modules(part):
    if not _module_exists(part):
        pytest.fail(f"{part} is listed in the boundaries but does not exist")
    code = (f"import sys, importlib\nimportlib.import_module({part!r})\n"
            f"bad = [m for m in {FORBIDDEN[part]!r} if m in sys.modules]\n"
            "print(','.join(bad))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{part} imports {result.stdout.strip()}"



# health is a leaf: besides itself it may only read the stdlib-only metric-name catalogue
HEALTH_MAY_IMPORT = ("moedesk.health", "moedesk.stats")


def test_health_imports_nothing_else_from_moedesk():
    """Every import statement in health/, lazy ones inside functions included."""
    bad = []
    for path in sorted((REPO / "moedesk" / "health").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "moedesk"
                    and not n.startswith(HEALTH_MAY_IMPORT)]
    assert bad == []
