"""The repository passes the linter and formatter that pre-commit runs (pinned in pyproject)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('command', [['check'], ['format', '--check', '--diff']])
def test_ruff(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, '-m', 'ruff', *command, '.'],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, (
        f'ruff {" ".join(command)} failed (fix with `ruff check --fix .` / `ruff format .`):\n'
        f'{result.stdout}{result.stderr}'
    )
