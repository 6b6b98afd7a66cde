"""The two test tiers, as pytest hooks (``tests/conftest.py`` imports them).

- The whole suite (``bash tools/run_tests.sh``, CI's ``.ci/run``): every test.
- The fast tier (``bash tools/run_tests.sh --fast``, or ``pytest --fast``): every test NOT marked
  ``slow`` or ``dist``, so a new test lands in it by default. Its budget is ``--tier-budget``
  seconds (120) on a 2-core CPU.

Time is measured per test (setup, call and teardown) as CPU seconds of the test process plus
those of the subprocesses it ran and waited for: unlike wall time, that does not grow when other
jobs share the machine. Every run ends with the fast tier's share of it: test count, CPU time and
the sum of the test durations against the budget (with ``--fast``, also the session's wall time),
the tier's tests whose call (the test function, without the fixtures they may share) takes
over ``--slow-test-cpu`` seconds (3; to be marked ``slow``), and those that waited longer than
that (wall minus CPU time: a sleep, a timeout, processes left behind by an earlier test). Past
the budget the report says so in one line (``OVER BUDGET``); it fails the run only with
``--strict-tier-budget``, because CPU seconds depend on the CPU: a passing suite must not fail on a
slower machine. In a whole-suite run the tier's time is the sum over the tests the fast tier runs
(which may miss fixture setup that a slow test paid for first).
"""

import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import pytest

# a test over this many CPU seconds belongs in the slow tier (CONTRIBUTING.md)
SLOW_TEST_CPU_S = 3.0
DEFAULT_BUDGET_S = 120.0
_EXCLUDED_FROM_FAST = ('slow', 'dist')


@dataclass
class _Timing:
    wall_s: float = 0.0  # setup + call + teardown
    cpu_s: float = 0.0  # setup + call + teardown, with shared fixtures the test set up first
    call_cpu_s: float = 0.0  # the test function itself


@dataclass
class _State:
    timings: Dict[str, _Timing] = field(default_factory=dict)
    fast_ids: set = field(default_factory=set)
    # CPU seconds of the process before its first test: interpreter, imports, collection
    startup_cpu_s: Optional[float] = None

    def tier_cpu_s(self) -> float:
        """Start-up plus the fast tier's tests: what a ``--fast`` run costs."""
        tests = sum(t.cpu_s for node, t in self.timings.items() if node in self.fast_ids)
        return (self.startup_cpu_s or 0.0) + tests


_STATE_KEY = pytest.StashKey[_State]()


_LOADED = time.perf_counter()


def _process_age_s() -> float:
    """Wall seconds since this process started (Linux ``/proc``; elsewhere since this module was
    imported, which misses the interpreter's start and the imports before it)."""
    try:
        fields = Path('/proc/self/stat').read_text().rsplit(')', 1)[1].split()
        start_ticks = int(fields[19])  # field 22, starttime, in clock ticks after boot
        uptime = float(Path('/proc/uptime').read_text().split()[0])
        return uptime - start_ticks / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _LOADED


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
        '--strict-tier-budget',
        action='store_true',
        help="fail the run when the fast tier's CPU time exceeds its budget",
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
    state = item.config.stash[_STATE_KEY]
    if state.startup_cpu_s is None:
        state.startup_cpu_s = cpu
    yield
    timing = state.timings.setdefault(item.nodeid, _Timing())
    timing.wall_s, timing.cpu_s = time.perf_counter() - wall, _cpu_seconds() - cpu


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    cpu = _cpu_seconds()
    yield
    timing = item.config.stash[_STATE_KEY].timings.setdefault(item.nodeid, _Timing())
    timing.call_cpu_s = _cpu_seconds() - cpu


def _fast_timings(config: pytest.Config) -> Dict[str, _Timing]:
    state = config.stash[_STATE_KEY]
    return {node: timing for node, timing in state.timings.items() if node in state.fast_ids}


def _over_budget(config: pytest.Config) -> bool:
    return config.stash[_STATE_KEY].tier_cpu_s() > config.getoption('tier_budget')


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    strict = session.config.getoption('strict_tier_budget')
    if strict and _over_budget(session.config) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash[_STATE_KEY]
    timings = _fast_timings(config)
    budget = config.getoption('tier_budget')
    cpu = state.tier_cpu_s()
    startup = state.startup_cpu_s or 0.0
    durations = sum(timing.wall_s for timing in timings.values())
    write = terminalreporter.write_line
    terminalreporter.section('fast tier (tests/helpers/tiers.py)')
    if config.getoption('fast'):
        write(
            f'fast tier: {len(timings)} tests in {_process_age_s():.0f} s wall, the whole pytest '
            f'process (budget {budget:g} s on 2 cores)'
        )
    else:
        excluded = ' / '.join(_EXCLUDED_FROM_FAST)
        write(f'fast tier within this run: {len(timings)} tests (not marked {excluded})')
    write(
        f'  {cpu:.1f} s CPU (start-up and collection {startup:.1f} s, tests {cpu - startup:.1f} s; '
        f'budget {budget:g} s); sum of test durations {durations:.1f} s (setup + call + teardown)'
    )
    limit = config.getoption('slow_test_cpu')
    slow = sorted(
        (
            (timing.call_cpu_s, node)
            for node, timing in timings.items()
            if timing.call_cpu_s > limit
        ),
        reverse=True,
    )
    for seconds, node in slow:
        write(f'  over {limit:g} s CPU in its call, mark it slow: {node} ({seconds:.1f} s)')
    # wall time without CPU: a sleep, a timeout, or what an earlier test left behind (a data
    # loader's workers that the garbage collector shuts down in a later test, waiting for each)
    waits = sorted(
        (
            (timing.wall_s - timing.cpu_s, node)
            for node, timing in timings.items()
            if timing.wall_s - timing.cpu_s > limit
        ),
        reverse=True,
    )
    for seconds, node in waits:
        write(
            f'  waited {seconds:.1f} s (wall minus CPU; a sleep, a timeout, or processes an '
            f'earlier test left behind): {node}'
        )
    if cpu > budget:
        verdict = 'FAILED' if config.getoption('strict_tier_budget') else 'OVER BUDGET'
        write(
            f'{verdict}: the fast tier takes {cpu:.1f} s CPU, over its {budget:g} s budget: mark '
            'its slowest tests @pytest.mark.slow (listed above) or make them cheaper.'
        )


# the configs that per-config tests run on in the fast tier: the paper's three variants and the
# demo (the other configs differ from them in one or two settings; the whole suite runs them all)
FAST_TIER_CONFIGS = (
    'deformable-detr_r50_16xb2-50e_coco',
    'deformable-detr-refine_r50_16xb2-50e_coco',
    'deformable-detr-refine-twostage_r50_16xb2-50e_coco',
    'deformable-detr-refine-twostage_r18_shapes',
)


def slow_except(values: Iterable[Any], keep: Callable[[Any], bool]) -> List[Any]:
    """``values`` for ``pytest.mark.parametrize`` with every value that ``keep`` rejects marked
    ``slow``: the fast tier runs the kept few, the whole suite every value. A tuple value is
    unpacked into the parameters of a multi-argument parametrize."""
    params = []
    for value in values:
        if keep(value):
            params.append(value)
        else:
            args = value if isinstance(value, tuple) else (value,)
            params.append(pytest.param(*args, marks=pytest.mark.slow))
    return params


def in_fast_tier_configs(config: Any) -> bool:
    """``config`` (a path or a file name) is one of :data:`FAST_TIER_CONFIGS`."""
    return Path(str(config)).stem in FAST_TIER_CONFIGS
