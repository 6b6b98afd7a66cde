"""Wall-clock time per named phase of a step, for the analysis tools that split a training step
(``profile_demo_step.py``, ``benchmark_train_step.py``)."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Callable, Dict, Iterator


class PhaseTimer:
    """Seconds per named phase of the current step (CPU: no sync needed). Phases nest: a wrapped
    method called inside another one's time counts in both."""

    def __init__(self) -> None:
        self.current: Dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.current[name] += time.perf_counter() - start

    def wrap(self, name: str, function: Callable) -> Callable:
        """``function``, its calls timed as phase ``name``."""

        def timed(*args, **kwargs):
            with self(name):
                return function(*args, **kwargs)

        return timed

    def pop(self) -> Dict[str, float]:
        """The current step's phases; the next step starts from zero."""
        phases, self.current = dict(self.current), defaultdict(float)
        return phases
