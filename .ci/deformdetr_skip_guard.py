"""pytest plugin for CI: only tests marked ``cuda`` may skip (a suite must not shrink
silently). ``.ci/run`` loads it with ``-p deformdetr_skip_guard``; without it nothing changes.

At the end of the session it prints how many tests skipped, grouped by reason, and turns a
passing session into a failing one (exit code 1) when any skipped test (or module skipped at
collection) is not marked ``cuda``.
"""

from collections import Counter
from typing import List, Tuple

import pytest

_skips: List[Tuple[str, str, bool]] = []  # (node id, reason, marked cuda)


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (file, line, 'Skipped: reason')
        return str(longrepr[2]).removeprefix('Skipped: ')
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, 'wasxfail'):  # xfail is not a skip
        _skips.append((item.nodeid, _reason(report), item.get_closest_marker('cuda') is not None))


def pytest_collectreport(report):
    if report.skipped:  # pytest.skip(allow_module_level=True) or importorskip at import
        _skips.append((report.nodeid, _reason(report), False))


def _not_allowed() -> List[Tuple[str, str, bool]]:
    return [skip for skip in _skips if not skip[2]]


def pytest_sessionfinish(session, exitstatus):
    if _not_allowed() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    write = terminalreporter.write_line
    cuda = [skip for skip in _skips if skip[2]]
    others = _not_allowed()
    terminalreporter.section('skip guard (.ci/deformdetr_skip_guard.py)')
    write(
        f'{len(_skips)} skipped: {len(cuda)} marked cuda (allowed), {len(others)} other '
        f'(not allowed)'
    )
    for reason, count in Counter(reason for _, reason, _ in cuda).most_common():
        write(f'  cuda  x{count}: {reason}')
    for node_id, reason, _ in others:
        write(f'  NOT ALLOWED: {node_id}: {reason}')
    if others:
        write(
            'FAILED: only tests marked cuda may skip; fix the test or its environment, or '
            'mark it cuda if it needs a GPU.'
        )
