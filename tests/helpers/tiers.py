"""The two test tiers, as pytest hooks (``tests/conftest.py`` imports them).

- The whole suite (``bash tools/run_tests.sh``, CI's ``.ci/run``): every test.
- The fast tier (``bash tools/run_tests.sh --fast``, or ``pytest --fast``): every test NOT marked
  ``slow`` or ``dist``, so a new test lands in it by default. Its budget is ``--tier-budget``
  seconds (120) on a 2-core CPU.

Time is measured per test (setup, call and teardown) as CPU seconds of the test process plus
those of the subprocesses it ran and waited for: unlike wall time, that does not grow when other
jobs share the machine. Every run ends with the fast tier's share of it: test count, CPU time and
the sum of the test durations against the budget (with ``--fast``, also the session's wall time),
and the tier's tests over ``--slow-test-cpu`` seconds (3; to be marked ``slow``). The run fails
when that CPU time exceeds the budget: with ``--fast`` the tier's own; in a whole-suite run the
sum over the tests the fast tier runs (which may miss fixture setup that a slow test paid for
first).
"""

import resource
import time
from dataclasses import dataclass, field
from typing import Dict, List

import pytest

# a test over this many CPU seconds belongs in the slow tier (CONTRIBUTING.md)
SLOW_TEST_CPU_S = 3.0
DEFAULT_BUDGET_S = 120.0
_EXCLUDED_FROM_FAST = ('slow', 'dist')


@dataclass
class _Timing:
    wall_s: float = 0.0
    cpu_s: float = 0.0


@dataclass
class _State:
    session_start: float = field(default_factory=time.perf_counter)
    timings: Dict[str, _Timing] = field(default_factory=dict)
    fast_ids: set = field(default_factory=set)


_STATE_KEY = pytest.StashKey[_State]()


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def in_fast_tier(item: pytest.Item) -> bool:
    """Not marked ``slow`` or ``dist`` (module-level ``pytestmark`` included)."""
    return not any(item.get_closest_marker(name) for name in _EXCLUDED_FROM_FAST)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup('tiers', 'test tiers (tests/helpers/tiers.py)')
    group.addoption(
        '--fast',
        action='store_true',
        help='run the fast tier only: the tests not marked slow or dist',
    )
    group.addoption(
        '--tier-budget',
        type=float,
        default=DEFAULT_BUDGET_S,
        help="the fast tier's budget in CPU seconds (default %(default)s)",
    )
    group.addoption(
        '--slow-test-cpu',
        type=float,
        default=SLOW_TEST_CPU_S,
        help='list fast-tier tests over this many CPU seconds, to be marked slow '
        '(default %(default)s)',
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATE_KEY] = _State()


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    state = config.stash[_STATE_KEY]
    state.fast_ids = {item.nodeid for item in items if in_fast_tier(item)}
    if not config.getoption('fast'):
        return
    deselected = [item for item in items if not in_fast_tier(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if in_fast_tier(item)]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    wall, cpu = time.perf_counter(), _cpu_seconds()
    yield
    item.config.stash[_STATE_KEY].timings[item.nodeid] = _Timing(
        time.perf_counter() - wall, _cpu_seconds() - cpu
    )


def _fast_timings(config: pytest.Config) -> Dict[str, _Timing]:
    state = config.stash[_STATE_KEY]
    return {node: timing for node, timing in state.timings.items() if node in state.fast_ids}


def _over_budget(config: pytest.Config) -> bool:
    cpu = sum(timing.cpu_s for timing in _fast_timings(config).values())
    return cpu > config.getoption('tier_budget')


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _over_budget(session.config) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash[_STATE_KEY]
    timings = _fast_timings(config)
    budget = config.getoption('tier_budget')
    cpu = sum(timing.cpu_s for timing in timings.values())
    durations = sum(timing.wall_s for timing in timings.values())
    write = terminalreporter.write_line
    terminalreporter.section('fast tier (tests/helpers/tiers.py)')
    if config.getoption('fast'):
        session_wall = time.perf_counter() - state.session_start
        write(
            f'fast tier: {len(timings)} tests, {session_wall:.0f} s wall for the whole session '
            f'(budget {budget:g} s on 2 cores)'
        )
    else:
        write(f'fast tier within this run (tests not marked {" / ".join(_EXCLUDED_FROM_FAST)}):')
    write(
        f'  {len(timings)} tests: {cpu:.1f} s CPU, {durations:.1f} s sum of test durations '
        f'(setup + call + teardown); budget {budget:g} s CPU'
    )
    limit = config.getoption('slow_test_cpu')
    slow = sorted(
        ((timing.cpu_s, node) for node, timing in timings.items() if timing.cpu_s > limit),
        reverse=True,
    )
    for seconds, node in slow:
        write(f'  over {limit:g} s CPU, mark it slow: {node} ({seconds:.1f} s)')
    if cpu > budget:
        write(
            f'FAILED: the fast tier takes {cpu:.1f} s CPU, over its {budget:g} s budget: mark '
            'its slowest tests @pytest.mark.slow (listed above) or make them cheaper.'
        )
