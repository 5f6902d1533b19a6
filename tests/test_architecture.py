"""The import contracts of pyproject.toml ([tool.importlinter], drawn in docs/ARCHITECTURE.md) hold: imports run
one way, down, with no circle; a new arrow back up fails here the day it is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def test_imports_keep_the_architecture(capsys):
    cli = pytest.importorskip("importlinter.cli", reason="needs import-linter (bash scripts/setup.sh --test)")
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    code = cli.lint_imports(config_filename=str(PYPROJECT), no_cache=True)
    report = capsys.readouterr().out
    assert code == 0, report
    assert f"Contracts: {len(contracts)} kept, 0 broken." in report, report  # every contract was checked
