"""Fault tests of ``tools/train.py``: start a real training process on ``tiny_faults_coco.py``,
watch its log, kill it, resume it, and compare what it saved with an uninterrupted run.

Every run writes to its own work dir; the reference (uninterrupted) run is made in the test
process with the same config and command-line handling as ``tools/train.py`` (one torch thread,
as the tools' processes), which saves starting a third process per test.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

from tests.helpers.tools import REPO_ROOT, coco_photo_options, tool_env

TINY_FAULTS_CONFIG = Path(__file__).resolve().parent / 'tiny_faults_coco.py'
MAX_ITERS = 8  # train_cfg.max_iters of tiny_faults_coco.py


def train_args(work_dir: Path, *options: str, resume: Optional[str] = None) -> List[str]:
    """tools/train.py's arguments for the fault config on the test photographs."""
    resume_args = (
        [] if resume is None else (['--resume'] if resume == 'auto' else ['--resume', resume])
    )
    return [
        str(TINY_FAULTS_CONFIG),
        '--work-dir',
        str(work_dir),
        *resume_args,
        '--cfg-options',
        *coco_photo_options(),
        *options,
    ]


class TrainingProcess:
    """``tools/train.py`` (or ``bash tools/dist_train.sh``) running in the background, its
    output in ``log_path``; a context manager that kills what is left of it on exit."""

    def __init__(
        self, command: List[str], log_path: Path, env: Optional[Dict[str, str]] = None
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, 'w')
        # its own session: the test can kill the whole tree (torchrun and its workers)
        self.process = subprocess.Popen(
            ['nice', '-n', '5', *command],
            cwd=REPO_ROOT,
            env=tool_env(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @classmethod
    def train(cls, work_dir: Path, *options: str, **kwargs) -> 'TrainingProcess':
        work_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            [sys.executable, 'tools/train.py', *train_args(work_dir, *options, **kwargs)],
            work_dir.parent / f'{work_dir.name}.log',
        )

    def __enter__(self) -> 'TrainingProcess':
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        """Until ``text`` is in the log; fail if the process ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None:
                pytest.fail(
                    f'the run ended (exit {self.process.returncode}) before logging '
                    f'{text!r}:\n{self.output[-4000:]}'
                )
            if time.monotonic() > deadline:
                pytest.fail(f'{text!r} not logged within {timeout} s:\n{self.output[-4000:]}')
            time.sleep(0.05)

    def wait(self, timeout: float = 180) -> int:
        return self.process.wait(timeout=timeout)


def run_train(work_dir: Path, *options: str, expect_rc: int = 0, **kwargs) -> str:
    """Run tools/train.py to its end; its output (fails on another exit status)."""
    with TrainingProcess.train(work_dir, *options, **kwargs) as run:
        returncode = run.wait()
        output = run.output
    if returncode != expect_rc:
        pytest.fail(f'tools/train.py exited with {returncode}, not {expect_rc}:\n{output[-6000:]}')
    return output


def reference_run(work_dir: Path, *options: str) -> Path:
    """Train uninterrupted in this process, as ``tools/train.py`` would; the work dir.
    Bitwise the same as the subprocess (checked: identical ``iter_8.pth`` state)."""
    from mmengine.runner import Runner

    from tools.tool_common import add_common_arguments, load_tool_config

    parser = argparse.ArgumentParser()
    add_common_arguments(parser, work_dir_help='')
    args = parser.parse_args(train_args(work_dir, *options)[1:])
    cfg = load_tool_config(str(TINY_FAULTS_CONFIG), args.launcher, args.cfg_options, args.work_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tools' processes (OMP_NUM_THREADS=1): the same sums
    try:
        Runner.from_cfg(cfg).train()
    finally:
        torch.set_num_threads(threads)
    return work_dir


def load(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)


def _tensors_equal(a, b, where: str) -> List[str]:
    """Where ``a`` and ``b`` (nested dicts / lists of tensors and numbers) differ."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and torch.equal(a, b)
        )
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f'{where} keys {sorted(set(a) ^ set(b), key=str)}']
        return [d for key in a for d in _tensors_equal(a[key], b[key], f'{where}.{key}')]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f'{where} lengths {len(a)} != {len(b)}']
        return [
            difference
            for i, (x, y) in enumerate(zip(a, b))
            for difference in _tensors_equal(x, y, f'{where}.{i}')
        ]
    return [] if a == b else [f'{where}: {a!r} != {b!r}']


def training_state_differences(path: Path, reference: Path) -> List[str]:
    """What differs between two training checkpoints: iteration, weights, optimizer state and
    lr schedule (bitwise), and the recorded per-iteration losses of the message hub."""
    ours, theirs = load(path), load(reference)
    differences = _tensors_equal(ours['meta']['iter'], theirs['meta']['iter'], 'meta.iter')
    for key in ('state_dict', 'optimizer', 'param_schedulers'):
        differences += _tensors_equal(ours[key], theirs[key], key)
    return differences
