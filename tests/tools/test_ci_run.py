""".ci/run: the README's test command, and a suite that cannot shrink silently: any skipped test
not marked ``cuda`` fails CI, and the skips are counted with their reasons. Run here on small
throw-away test folders (the environment as it is: DEFORMDETR_SKIP_SETUP=1)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.tiers import slow_except
from tests.helpers.tools import REPO_ROOT

TESTS = {
    'plain_skip': 'import pytest\n\ndef test_a():\n    pytest.skip("no data here")\n',
    'cuda_skip': (
        'import pytest\n\n@pytest.mark.cuda\ndef test_a():\n    pytest.skip("needs a CUDA GPU")\n'
    ),
    'module_skip': 'import pytest\npytest.skip("whole module", allow_module_level=True)\n',
    'failure_and_skip': (
        'import pytest\n\ndef test_fails():\n    assert False\n\n'
        'def test_skips():\n    pytest.skip("later")\n'
    ),
    'xfail': (
        'import pytest\n\n@pytest.mark.xfail(reason="known")\ndef test_a():\n'
        '    assert False\n\ndef test_b():\n    pass\n'
    ),
}


def ci_run(tmp_path: Path, *names: str) -> subprocess.CompletedProcess:
    (tmp_path / 'pytest.ini').write_text('[pytest]\nmarkers =\n    cuda: needs a GPU\n')
    for name in names:
        (tmp_path / f'test_{name}.py').write_text(TESTS[name])
    env = dict(os.environ, DEFORMDETR_SKIP_SETUP='1', DEFORMDETR_VENV=sys.prefix)
    env.pop('PYTHONPATH', None)  # .ci/run sets what it needs
    result = subprocess.run(
        ['bash', str(REPO_ROOT / '.ci' / 'run'), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    result.output = result.stdout + result.stderr
    return result


@pytest.mark.parametrize(
    'names,code,counts',
    slow_except(
        [
            (['cuda_skip'], 0, '1 skipped: 1 marked cuda (allowed), 0 other (not allowed)'),
            (['plain_skip'], 1, '1 skipped: 0 marked cuda (allowed), 1 other (not allowed)'),
            (['module_skip', 'cuda_skip'], 1, '2 skipped: 1 marked cuda (allowed), 1 other'),
            (['plain_skip', 'cuda_skip'], 1, '2 skipped: 1 marked cuda (allowed), 1 other'),
            (['failure_and_skip'], 1, '1 skipped: 0 marked cuda (allowed), 1 other'),
            (['xfail'], 0, '0 skipped: 0 marked cuda (allowed), 0 other (not allowed)'),
        ],
        # the fast tier: an allowed skip (exit 0) and a module skip beside it (exit 1)
        lambda case: case[0] in (['cuda_skip'], ['module_skip', 'cuda_skip']),
    ),
)
def test_only_cuda_tests_may_skip(tmp_path, names, code, counts):
    result = ci_run(tmp_path, *names)
    assert result.returncode == code, result.output
    assert counts in result.output
    if 'cuda_skip' in names:
        assert 'cuda  x1: needs a CUDA GPU' in result.output
        assert 'SKIPPED [1]' in result.output  # -rs: pytest's own list of skip reasons
    if 'plain_skip' in names:
        assert 'NOT ALLOWED: test_plain_skip.py::test_a: no data here' in result.output
        assert 'FAILED: only tests marked cuda may skip' in result.output
    if 'module_skip' in names:
        assert 'NOT ALLOWED: test_module_skip.py: whole module' in result.output


def test_ci_run_calls_the_readme_test_command():
    script = (REPO_ROOT / '.ci' / 'run').read_text()
    assert 'bash tools/run_tests.sh' in script
    assert 'bash tools/run_tests.sh' in (REPO_ROOT / 'README.md').read_text()
