"""The parts' import boundaries, as import-linter contracts (pyproject.toml
[tool.importlinter], docs/architecture.md "Parts and their boundaries").

Import-linter reads every import statement, lazy ones inside functions included, so a
forbidden import anywhere in a part breaks its contract; the declared lazy exceptions are
the contracts' `ignore_imports`. The one import-time check it cannot make (that
`moedesk --help` loads no torch) is tests/integration/test_cli_runs.py's subprocess test.
"""

from __future__ import annotations

import tomllib

import pytest
from importlinter.cli import lint_imports

from tests.conftest import REPO


@pytest.mark.slow  # builds the whole import graph: seconds, and more on a busy machine
def test_every_import_contract_is_kept(capsys, tmp_path):
    code = lint_imports(config_filename=str(REPO / "pyproject.toml"), no_logo=True,
                        cache_dir=str(tmp_path / "grimp"))
    report = capsys.readouterr().out
    assert code == 0, report
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"]
    # the summary line (a long contract name may wrap its own KEPT onto the next line)
    assert f"Contracts: {len(contracts)} kept, 0 broken." in report and len(contracts) >= 10
    named = {c["name"].split(":")[0] for c in contracts}
    assert {"stats is a leaf", "health is a leaf", "paths is stdlib only",
            "the trainers never touch the store, SQLite or the UI"} <= named

