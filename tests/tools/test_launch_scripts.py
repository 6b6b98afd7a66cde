"""The launch scripts' command lines, without launching: usage errors, and the srun call of
tools/slurm_*.sh with a stand-in srun that prints its arguments (no Slurm needed)."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers.tools import REPO_ROOT


def _bash(script: str, *args: str, env: dict = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ['bash', f'tools/{script}', *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, **(env or {})),
        timeout=60,
    )


@pytest.mark.parametrize(
    'script, num_args',
    [('dist_train.sh', 1), ('dist_test.sh', 2), ('slurm_train.sh', 3), ('slurm_test.sh', 3)],
)
def test_too_few_arguments_print_usage(script, num_args):
    result = _bash(script, *['x'] * num_args)
    assert result.returncode == 2
    assert 'usage:' in result.stderr


@pytest.fixture
def fake_srun(tmp_path: Path) -> dict:
    srun = tmp_path / 'srun'
    srun.write_text('#!/bin/sh\necho srun "$@"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    return dict(PATH=f'{tmp_path}{os.pathsep}{os.environ["PATH"]}', PYTHON='python-of-choice')


def test_slurm_train_command(fake_srun):
    result = _bash(
        'slurm_train.sh',
        'gpu',
        'deformdetr',
        'cfg.py',
        'work',
        '--amp',
        env=dict(fake_srun, GPUS='16', SRUN_ARGS='--qos=low --time=10'),
    )
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[:3] == ['srun', '-p', 'gpu']
    for expected in [
        '--job-name=deformdetr',
        '--gres=gpu:8',
        '--ntasks=16',
        '--ntasks-per-node=8',
        '--cpus-per-task=5',
        '--qos=low',
        '--time=10',
    ]:
        assert expected in words
    tool = words.index('python-of-choice')
    assert words[tool:] == [
        'python-of-choice',
        '-u',
        f'{REPO_ROOT}/tools/train.py',
        'cfg.py',
        '--work-dir=work',
        '--launcher=slurm',
        '--amp',
    ]


def test_slurm_test_command(fake_srun):
    result = _bash(
        'slurm_test.sh',
        'gpu',
        'job',
        'cfg.py',
        'ckpt.pth',
        '--out',
        'r.pkl',
        env=dict(fake_srun, GPUS_PER_NODE='4', CPUS_PER_TASK='2'),
    )
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert '--gres=gpu:4' in words and '--cpus-per-task=2' in words and '--ntasks=8' in words
    tool = words.index('python-of-choice')
    assert words[tool:] == [
        'python-of-choice',
        '-u',
        f'{REPO_ROOT}/tools/test.py',
        'cfg.py',
        'ckpt.pth',
        '--launcher=slurm',
        '--out',
        'r.pkl',
    ]
