"""The tools as a user runs them, with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in the environment: a
checkpoint that would run ``touch marker`` never runs it and the user sees OUR refusal; a damaged
checkpoint is one error naming the file and its size, not torch's zip-reader message."""

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from tests.checkpoint.ckpt_files import CONVERTER, SHELL_GLOBAL, damage_file
from tests.helpers.tools import REPO_ROOT, TINY_CONFIG

pytestmark = pytest.mark.slow

LEAKS = (
    'PytorchStreamReader',
    'Ran out of input',
    'EOFError',
    'weights_only` set to `False`',
    'Weights only load failed',
)


def run_failing(args: List[str], timeout: float = 240) -> str:
    """Run ``python ARGS`` from the repository root with the variable set; it must fail. Returns
    stdout + stderr."""
    env = dict(
        os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1'
    )
    result = subprocess.run(
        ['nice', '-n', '5', sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    return output


def data_options(coco_photos: Path) -> List[str]:
    """The tiny config's dataloaders and evaluators on tests/data/coco_photos."""
    ann_file = f'{coco_photos}/annotations/instances.json'
    return [
        f'{split}_dataloader.dataset.data_root={coco_photos}/' for split in ('train', 'val', 'test')
    ] + [f'val_evaluator.ann_file={ann_file}', f'test_evaluator.ann_file={ann_file}']


def assert_refused(output: str, path: Path, marker: Path) -> None:
    assert not marker.exists()
    assert f'refusing to load {path}: it pickles {SHELL_GLOBAL}' in output
    assert f'--trust-global {SHELL_GLOBAL}' in output
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set' in output
    for leak in LEAKS:
        assert leak not in output


def assert_unreadable(output: str, path: Path) -> None:
    assert f'cannot read checkpoint {path} ({path.stat().st_size} bytes)' in output
    for leak in LEAKS:
        assert leak not in output


def check_output(kind: str, output: str, path: Path, marker: Path) -> None:
    if kind == 'payload':
        assert_refused(output, path, marker)
    else:
        assert_unreadable(output, path)


@pytest.mark.parametrize('kind', ['payload', 'mid_tensor'])
def test_test_py(kind, evil_checkpoint, training_checkpoint, coco_photos, tmp_path):
    path, marker = evil_checkpoint
    if kind != 'payload':
        path = damage_file(training_checkpoint, kind, tmp_path / f'{kind}.pth')
    output = run_failing(
        [
            'tools/test.py',
            str(TINY_CONFIG),
            str(path),
            '--work-dir',
            str(tmp_path / 'work'),
            '--cfg-options',
            *data_options(coco_photos),
        ]
    )
    check_output(kind, output, path, marker)


@pytest.mark.parametrize('kind', ['payload', 'mid_tensor'])
def test_train_py_resume_from_path(
    kind, evil_checkpoint, training_checkpoint, coco_photos, tmp_path
):
    path, marker = evil_checkpoint
    if kind != 'payload':
        path = damage_file(training_checkpoint, kind, tmp_path / f'{kind}.pth')
    output = run_failing(
        [
            'tools/train.py',
            str(TINY_CONFIG),
            '--work-dir',
            str(tmp_path / 'work'),
            '--resume',
            str(path),
            '--cfg-options',
            *data_options(coco_photos),
        ]
    )
    check_output(kind, output, path, marker)


@pytest.mark.parametrize('kind', ['payload', 'mid_tensor'])
def test_converter(kind, evil_checkpoint, training_checkpoint, tmp_path):
    """The converter prints the message alone (no traceback) and exits 1."""
    path, marker = evil_checkpoint
    if kind != 'payload':
        path = damage_file(training_checkpoint, kind, tmp_path / f'{kind}.pth')
    output = run_failing([str(CONVERTER), str(path), str(tmp_path / 'out.pth')])
    check_output(kind, output, path, marker)
    assert ('error: refusing to load' if kind == 'payload' else 'error: cannot read') in output
    assert 'Traceback' not in output
    assert not (tmp_path / 'out.pth').exists()
