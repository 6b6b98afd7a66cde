"""Pick torch's CPU thread count while training, from measured iteration times.

Why: on a small CPU shared with other jobs, two intra-op threads on what is effectively one free
core wait on each other at every parallel region, and an iteration can take several times longer
than with one thread; on idle cores two threads are faster. No fixed count is right for both, so the
hook times a few iterations at the other count from time to time and keeps the faster one.
"""

from __future__ import annotations

import statistics
import time
from typing import Optional

import torch
from mmengine.hooks import Hook


class ThreadCountTuner(Hook):
    """After ``period`` iterations, run ``trial`` iterations at the alternative thread count
    (1 <-> ``max_threads``) and switch when their median time beats the ``trial`` iterations
    just before by more than ``margin``. A trial that loses doubles the wait before the next one
    (up to ``max_period``): on an idle machine the trials cost little (~1%)."""

    priority = 'VERY_LOW'

    def __init__(
        self,
        max_threads: int,
        period: int = 100,
        trial: int = 8,
        margin: float = 0.1,
        max_period: int = 800,
    ) -> None:
        self.max_threads = max_threads
        self.period, self.trial, self.margin = period, trial, margin
        self.min_period, self.max_period = period, max_period
        self._next_trial = period  # iteration count at which the next trial starts
        self._times: list[float] = []
        self._start: Optional[float] = None
        self._baseline: Optional[float] = None  # median before the trial; None outside a trial
        self._previous = torch.get_num_threads()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.max_threads < 2 or self._start is None:
            return
        self._times.append(time.perf_counter() - self._start)
        if self._baseline is None:
            self._times = self._times[-self.trial :]  # only the latest count as the baseline
        step = runner.iter + 1  # iterations done
        if self._baseline is None and step >= self._next_trial and len(self._times) >= self.trial:
            # start a trial at the other thread count
            self._baseline = statistics.median(self._times[-self.trial :])
            self._previous = torch.get_num_threads()
            torch.set_num_threads(1 if self._previous > 1 else self.max_threads)
            self._times = []
        elif self._baseline is not None and len(self._times) >= self.trial:
            trial = statistics.median(self._times)
            keep = trial < self._baseline * (1 - self.margin)
            if not keep:
                torch.set_num_threads(self._previous)
            self.period = self.min_period if keep else min(2 * self.period, self.max_period)
            self._next_trial = step + self.period
            runner.logger.info(
                f'threads: {self._previous} -> {1 if self._previous > 1 else self.max_threads} '
                f'gave {self._baseline:.2f} -> {trial:.2f} s/iter; using '
                f'{torch.get_num_threads()}'
            )
            self._baseline = None
            self._times = []
