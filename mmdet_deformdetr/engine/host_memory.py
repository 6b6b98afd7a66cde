"""Host memory of a training run, main process and dataloader workers: ``HostMemoryHook``.

Every ``interval`` iterations the hook reads, for the training process and each of its child
processes (the dataloader workers), the resident set size (RSS), the proportional set size (PSS:
pages shared between processes divided among them) and the unique set size (USS) from
``/proc/<pid>/smaps_rollup`` (``psutil``'s ``memory_full_info``). RSS is what ``top`` shows and
what a scheduler's memory limit usually counts; summed over the workers it counts the pages they
share with the main process (the dataset's annotations, forked copy-on-write) several times. PSS
sums to the real footprint of the process tree, so ``pss_total`` is the figure to watch for
growth.

RSS and PSS include file-backed pages (the shared libraries: several hundred MB for torch), which
the kernel drops and reloads under memory pressure from other processes; ``anon_main`` /
``anon_workers`` (``RssAnon`` of ``/proc/<pid>/status``: heap and other anonymous memory) are
free of that and show a leak most directly.

Each sample is a log line and a row of a CSV file (``out_file``, by default
``<log_dir>/host_memory.csv``): iteration, elapsed seconds, ``rss_main``, ``pss_main``,
``uss_main``, the worker count and their summed ``rss_workers`` / ``pss_workers`` /
``uss_workers``, ``pss_total``, and ``anon_main`` / ``anon_workers`` (bytes).
``tools/analysis_tools/soak_memory.py`` trains the demo for thousands of iterations with it and
measures the growth after warm-up.

In a multi-process run only rank 0 samples (its process and its workers; the other ranks are
alike). ``psutil`` is needed; it comes with the ``analysis`` extra.
"""

import csv
import os
import os.path as osp
import time
from typing import Dict, List, Optional

from mmengine.dist import is_main_process
from mmengine.hooks import Hook

#: the CSV columns, in order
COLUMNS = (
    'iter',
    'seconds',
    'rss_main',
    'pss_main',
    'uss_main',
    'workers',
    'rss_workers',
    'pss_workers',
    'uss_workers',
    'pss_total',
    'anon_main',
    'anon_workers',
)


def anonymous_bytes(pid: int) -> int:
    """``RssAnon`` of process ``pid`` in bytes (0 where /proc has no such line)."""
    try:
        with open(f'/proc/{pid}/status') as file:
            for line in file:
                if line.startswith('RssAnon:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def sample_process_tree(pid: Optional[int] = None) -> Dict[str, int]:
    """RSS / PSS / USS (bytes) of process ``pid`` (default: this one) and the sums over its
    child processes (recursive); children that end while being read are skipped."""
    import psutil

    process = psutil.Process(pid or os.getpid())
    main = process.memory_full_info()
    sums = dict(rss=0, pss=0, uss=0, anon=0)
    workers = 0
    for child in process.children(recursive=True):
        try:
            info = child.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        workers += 1
        for key in ('rss', 'pss', 'uss'):
            sums[key] += getattr(info, key)
        sums['anon'] += anonymous_bytes(child.pid)
    return dict(
        rss_main=main.rss,
        pss_main=main.pss,
        uss_main=main.uss,
        workers=workers,
        rss_workers=sums['rss'],
        pss_workers=sums['pss'],
        uss_workers=sums['uss'],
        pss_total=main.pss + sums['pss'],
        anon_main=anonymous_bytes(process.pid),
        anon_workers=sums['anon'],
    )


def _mb(value: int) -> str:
    return f'{value / 2**20:.0f} MB'


class HostMemoryHook(Hook):
    """Sample host memory of the training process and its dataloader workers (see the module
    docstring).

    Args:
        interval: sample every ``interval`` training iterations (and once before the first).
        out_file: CSV file to append the samples to; default ``<log_dir>/host_memory.csv``.
    """

    priority = 'BELOW_NORMAL'

    def __init__(self, interval: int = 100, out_file: Optional[str] = None) -> None:
        if interval < 1:
            raise ValueError(f'interval must be >= 1, got {interval}')
        self.interval = interval
        self.out_file = out_file
        self.samples: List[Dict[str, float]] = []
        self._start = time.monotonic()

    def before_train(self, runner) -> None:
        if not is_main_process():
            return
        try:
            import psutil  # noqa: F401
        except ImportError as error:
            raise ImportError(
                'HostMemoryHook needs psutil: pip install psutil (or the analysis extra)'
            ) from error
        if self.out_file is None:
            self.out_file = osp.join(runner.log_dir, 'host_memory.csv')
        self._start = time.monotonic()
        self._sample(runner, runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if is_main_process() and self.every_n_train_iters(runner, self.interval):
            self._sample(runner, runner.iter + 1)

    def _sample(self, runner, iteration: int) -> None:
        sample = dict(iter=iteration, seconds=round(time.monotonic() - self._start, 1))
        sample.update(sample_process_tree())
        self.samples.append(sample)
        new_file = not osp.isfile(self.out_file)
        with open(self.out_file, 'a', newline='') as file:
            writer = csv.DictWriter(file, fieldnames=COLUMNS)
            if new_file:
                writer.writeheader()
            writer.writerow(sample)
        runner.logger.info(
            f'host memory at iteration {iteration}: main RSS {_mb(sample["rss_main"])} '
            f'PSS {_mb(sample["pss_main"])}; {sample["workers"]} worker(s) RSS '
            f'{_mb(sample["rss_workers"])} PSS {_mb(sample["pss_workers"])}; '
            f'PSS in all {_mb(sample["pss_total"])}; anonymous main {_mb(sample["anon_main"])} '
            f'workers {_mb(sample["anon_workers"])}'
        )
