"""What the tools print, counted: a tiny training run and tools/infer.py on one image stay within
a budget of lines and warnings (docs/usage.md, "What the terminal shows", states the same
budgets); the log file keeps what the screen leaves out; errors the tools explain end without a
traceback."""

import re
import sys

import pytest

from tests.helpers.broken_coco import make_coco
from tests.helpers.tools import TINY_CONFIG, run_tool

pytestmark = pytest.mark.slow

#: lines on the terminal: tools/train.py on the tiny config (2 iterations, no validation), and
#: tools/infer.py on one image
TRAIN_LINE_BUDGET = 25
INFER_LINE_BUDGET = 5
#: Python warnings and WARNING records: none expected from a healthy run
WARNING_BUDGET = 0

_WARNING = re.compile(r'\w+Warning: | - WARNING - ')


def warnings_in(output: str) -> list:
    return [line for line in output.splitlines() if _WARNING.search(line)]


def test_training_screen_within_budget_and_log_file_complete(
    python_tool, tiny_data_options, tmp_path
):
    result = python_tool(
        'tools/train.py',
        str(TINY_CONFIG),
        '--work-dir',
        str(tmp_path),
        '--cfg-options',
        *tiny_data_options,
    )
    lines = result.output.splitlines()
    assert len(lines) <= TRAIN_LINE_BUDGET, result.output
    assert len(warnings_in(result.output)) <= WARNING_BUDGET, result.output
    # the first screen: where things go and what runs, then progress
    log_file = next(tmp_path.glob('*/*.log'))
    assert f'Config: {TINY_CONFIG} (in full: {log_file} and {tmp_path / TINY_CONFIG.name})' in (
        result.output
    )
    assert any(line.endswith(f'log: {log_file}') for line in lines), result.output
    assert any('Model: DeformDETR (ResNet-18 backbone, 4 feature levels' in line for line in lines)
    assert any('param group 1: lr=2e-05' in line and 'backbone (15)' in line for line in lines)
    assert 'Iter(train) [2/2]' in result.output
    for hidden in ('paramwise_options', 'Hooks will be executed', 'System environment', "type='"):
        assert hidden not in result.output, hidden
    # ... all of it in the log file
    logged = log_file.read_text()
    for kept in (
        'paramwise_options -- ',
        'Hooks will be executed',
        'System environment',
        'Config:',
    ):
        assert kept in logged, kept


def test_verbose_shows_everything(python_tool, tiny_data_options, tmp_path):
    result = python_tool(
        'tools/train.py',
        str(TINY_CONFIG),
        '--work-dir',
        str(tmp_path),
        '--verbose',
        '--cfg-options',
        *tiny_data_options,
        'train_cfg.max_iters=1',
    )
    for shown in ('paramwise_options -- ', 'Hooks will be executed', 'System environment'):
        assert shown in result.output, shown
    assert "type='DeformDETR'" in result.output  # the whole config
    assert len(result.output.splitlines()) > 10 * TRAIN_LINE_BUDGET


def test_infer_screen_within_budget(python_tool, coco_photos, tiny_checkpoint, tmp_path):
    image = sorted((coco_photos / 'images').glob('*.jpg'))[0]
    result = python_tool(
        'tools/infer.py',
        str(image),
        str(TINY_CONFIG),
        str(tiny_checkpoint),
        '--out-dir',
        str(tmp_path),
        '--device',
        'cpu',
    )
    assert len(result.output.splitlines()) <= INFER_LINE_BUDGET, result.output
    assert len(warnings_in(result.output)) <= WARNING_BUDGET, result.output
    assert f'results written to {tmp_path}' in result.output
    assert (tmp_path / 'vis' / image.name).is_file()


def test_test_py_reports_bad_data_without_a_traceback(coco_photos, tiny_checkpoint, tmp_path):
    root = make_coco(tmp_path / 'data', coco_photos, image_defects=['missing'])
    options = [f'{split}_dataloader.dataset.data_root={root}/' for split in ('val', 'test')]
    options += [
        f'{key}.ann_file={root}/annotations/instances.json'
        for key in ('val_evaluator', 'test_evaluator')
    ]
    result = run_tool(
        [
            sys.executable,
            'tools/test.py',
            str(TINY_CONFIG),
            str(tiny_checkpoint),
            '--work-dir',
            str(tmp_path / 'work'),
            '--cfg-options',
            *options,
        ],
        check=False,
    )
    assert result.returncode == 1
    assert 'tools/test.py: error: CheckedCocoDataset (' in result.output, result.output[-3000:]
    assert 'image file does not exist' in result.output or 'missing' in result.output
    assert 'Traceback' not in result.output
    assert '(the traceback: in ' in result.output and '--verbose prints it here' in result.output
