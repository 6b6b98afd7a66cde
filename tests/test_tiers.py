"""The test tiers (tests/helpers/tiers.py): ``--fast`` runs the tests not marked slow or dist, a
new unmarked test lands in it, and the tier's CPU time is reported against its budget, failing the
run past it only when asked (--strict-tier-budget). Run on throw-away test folders in a pytest
subprocess (no torch imported there)."""

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from tests.helpers.tools import REPO_ROOT

CONFTEST = (
    'from tests.helpers.tiers import (  # noqa: F401\n'
    '    pytest_addoption, pytest_collection_modifyitems, pytest_configure, pytest_runtest_call,\n'
    '    pytest_runtest_protocol, pytest_sessionfinish, pytest_terminal_summary)\n'
)
TESTS = """import time
import pytest


def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_new_unmarked():
    burn(0.3)


@pytest.mark.slow
def test_marked_slow():
    pass


@pytest.mark.dist
def test_marked_dist():
    pass
"""
SLOW_MODULE = (
    'import pytest\n\npytestmark = pytest.mark.slow\n\n\ndef test_in_slow_module():\n    pass\n'
)


def run_pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / 'pytest.ini').write_text('[pytest]\nmarkers =\n    slow: s\n    dist: d\n')
    (tmp_path / 'conftest.py').write_text(CONFTEST)
    (tmp_path / 'test_tiers_sample.py').write_text(TESTS)
    (tmp_path / 'test_slow_module.py').write_text(SLOW_MODULE)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    result.output = result.stdout + result.stderr
    return result


def passed(result: subprocess.CompletedProcess) -> List[str]:
    return [line for line in result.output.splitlines() if ' PASSED' in line]


def test_fast_runs_only_unmarked_tests_and_reports_the_budget(tmp_path):
    result = run_pytest(tmp_path, '--fast', '-v')
    assert result.returncode == 0, result.output
    assert [line.split(' ')[0] for line in passed(result)] == [
        'test_tiers_sample.py::test_new_unmarked'
    ]
    assert '3 deselected' in result.output
    assert 'fast tier: 1 tests in ' in result.output
    assert 'budget 120 s on 2 cores' in result.output and 'budget 120 s)' in result.output
    assert 'mark it slow' not in result.output


def test_whole_suite_runs_everything_and_estimates_the_tier(tmp_path):
    result = run_pytest(tmp_path, '-v')
    assert result.returncode == 0, result.output
    assert len(passed(result)) == 4
    # only the unmarked test counts towards the tier
    assert 'fast tier within this run: 1 tests (not marked slow / dist)' in result.output


def test_waiting_is_reported_apart_from_cpu(tmp_path):
    """A test that sleeps is listed as waiting, not as slow; one that burns CPU is not waiting."""
    sleeper = 'import time\n\n\ndef test_sleeps():\n    time.sleep(1)\n'
    (tmp_path / 'test_waits.py').write_text(sleeper)
    result = run_pytest(tmp_path, '--fast', '--slow-test-cpu', '0.5')
    assert result.returncode == 0, result.output
    waited = [line for line in result.output.splitlines() if line.startswith('  waited ')]
    assert len(waited) == 1 and waited[0].endswith('): test_waits.py::test_sleeps'), waited
    assert 'mark it slow' not in result.output


@pytest.mark.slow
@pytest.mark.parametrize('fast', [True, False], ids=['fast', 'whole-suite'])
def test_over_budget_is_reported_and_fails_only_when_strict(tmp_path, fast):
    args = ['--tier-budget', '0.1', '--slow-test-cpu', '0.2'] + (['--fast'] if fast else [])
    result = run_pytest(tmp_path, *args)
    assert result.returncode == 0, result.output
    assert 'OVER BUDGET: the fast tier takes' in result.output
    assert 'over its 0.1 s budget' in result.output
    assert 'mark it slow: test_tiers_sample.py::test_new_unmarked' in result.output
    strict = run_pytest(tmp_path, *args, '--strict-tier-budget')
    assert strict.returncode == 1, strict.output
    assert 'FAILED: the fast tier takes' in strict.output


def test_the_repository_conftest_installs_the_tiers():
    conftest = (REPO_ROOT / 'tests' / 'conftest.py').read_text()
    assert 'from tests.helpers.tiers import' in conftest
    script = (REPO_ROOT / 'tools' / 'run_tests.sh').read_text()
    assert 'pytest "$@"' in script  # --fast reaches pytest
    # pytest runs as a child: an exec'd pytest would count the set-up's CPU and time as its own
    assert 'exec "$VENV/bin/python"' not in script
    assert '--durations=20' in (REPO_ROOT / '.ci' / 'run').read_text()
