"""tools/dist_train.sh and tools/dist_test.sh with 2 CPU processes (gloo), end to end.

Each variant (plain / refine / two-stage) trains 2 iterations of the tiny config under DDP with
mmengine's default find_unused_parameters=False: a parameter without a gradient in iteration 1
makes DDP raise in iteration 2 ("Expected to have finished reduction ..."), so a passing run is the
check that no variant has unused parameters. dist_test.sh then evaluates the two-stage checkpoint
with CocoMetric on 4 of the photographs in tests/data/coco_photos (2 per process).
"""

import pickle
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from tests.helpers.tools import TINY_CONFIG, VARIANT_OPTIONS, free_port, run_tool

pytestmark = [pytest.mark.slow, pytest.mark.dist]

_CHECKPOINTS: Dict[str, Path] = {}  # variant -> iter_2.pth, shared by the tests of this module


def _dist_env(python: str) -> Dict[str, str]:
    return dict(PYTHON=python, PORT=str(free_port()))


def _train(variant: str, work_dir: Path, data_options: List[str]) -> str:
    result = run_tool(
        [
            'bash',
            'tools/dist_train.sh',
            str(TINY_CONFIG),
            '2',
            '--work-dir',
            str(work_dir),
            '--cfg-options',
            *VARIANT_OPTIONS[variant],
            *data_options,
        ],
        env=_dist_env(sys.executable),
    )
    _CHECKPOINTS[variant] = work_dir / 'iter_2.pth'
    return result.output


def _trained(variant: str, tmp_path_factory, data_options: List[str]) -> Path:
    if variant not in _CHECKPOINTS:
        _train(variant, tmp_path_factory.mktemp(f'dist_{variant}'), data_options)
    return _CHECKPOINTS[variant]


@pytest.mark.parametrize('variant', list(VARIANT_OPTIONS))
def test_dist_train_two_processes(variant, tmp_path_factory, tiny_data_options):
    work_dir = tmp_path_factory.mktemp(f'dist_{variant}')
    output = _train(variant, work_dir, tiny_data_options)

    assert 'Distributed training: True' in output
    # the CPU wrapper was selected (the whole config is in the log file)
    assert "type='CPUDistributedDataParallel'" in next(work_dir.glob('*/*.log')).read_text()
    assert 'Iter(train) [2/2]' in output
    checkpoint = torch.load(work_dir / 'iter_2.pth', map_location='cpu', weights_only=False)
    assert checkpoint['meta']['iter'] == 2
    # saved from the unwrapped model: no DDP 'module.' prefix
    assert not any(key.startswith('module.') for key in checkpoint['state_dict'])
    assert any(key.startswith('transformer.enc_output') for key in checkpoint['state_dict']) == (
        variant == 'two_stage'
    )


def test_dist_test_two_processes(tmp_path_factory, tiny_data_options, tmp_path):
    checkpoint = _trained('two_stage', tmp_path_factory, tiny_data_options)
    predictions = tmp_path / 'predictions.pkl'
    result = run_tool(
        [
            'bash',
            'tools/dist_test.sh',
            str(TINY_CONFIG),
            str(checkpoint),
            '2',
            '--work-dir',
            str(tmp_path),
            '--out',
            str(predictions),
            '--cfg-options',
            *VARIANT_OPTIONS['two_stage'],
            *tiny_data_options,
        ],
        env=_dist_env(sys.executable),
    )

    assert 'Load checkpoint from' in result.output
    assert 'coco/bbox_mAP:' in result.output  # CocoMetric ran on the gathered results
    with open(predictions, 'rb') as file:
        results = pickle.load(file)
    # 4 images split over 2 processes, gathered back in dataset order on rank 0
    assert len(results) == 4
    assert len({result['img_id'] for result in results}) == 4
    assert all(len(result['pred_instances']['scores']) <= 10 for result in results)
