"""mmengine's resume / load_from of our training checkpoints on torch >= 2.6 (weights_only=True).

A tiny DeformDETR trains 4 iterations (checkpoint every 2); a second Runner resumes from iteration
2.
The iteration counter, the optimizer state and the losses of iterations 3 and 4 must continue
exactly where the first run left them.
"""

import copy
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from torch.utils.data import Dataset

from tests.helpers.models import tiny_model_cfg

pytestmark = pytest.mark.slow


class TinyDetectionSet(Dataset):
    """8 random 64x48 images with 1-3 boxes each; item i is the same in every run."""

    metainfo = dict(classes=('a', 'b', 'c'))

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        from mmdet.testing import demo_mm_inputs

        torch.manual_seed(index)
        packed = demo_mm_inputs(
            batch_size=1, image_shapes=[(3, 64, 48)], num_items=[1 + index % 3], num_classes=3
        )
        return dict(inputs=packed['inputs'][0], data_samples=packed['data_samples'][0])


class Recorder(Hook):
    """Losses per iteration, and the state right after loading (before the first new iteration)."""

    def __init__(self) -> None:
        self.losses: Dict[int, float] = {}
        self.start_iter = None
        self.start_optimizer = None

    def before_train(self, runner) -> None:
        self.start_iter = runner.iter
        # a copy: the optimizer keeps updating its state tensors in place
        self.start_optimizer = copy.deepcopy(runner.optim_wrapper.state_dict())

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        # runner.iter: 0-based index of this iteration
        self.losses[runner.iter] = outputs['loss'].item()


def make_runner(work_dir: Path, recorder: Recorder, load_from=None, resume=False) -> Runner:
    return Runner(
        model=tiny_model_cfg('refine'),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=TinyDetectionSet(),
            batch_size=2,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=True, seed=0),
            collate_fn=dict(type='pseudo_collate'),
        ),
        optim_wrapper=dict(
            optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4),
            clip_grad=dict(max_norm=0.1, norm_type=2),
        ),
        param_scheduler=dict(type='MultiStepLR', milestones=[3], by_epoch=False),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=4),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
            logger=dict(type='LoggerHook', interval=1),
        ),
        custom_hooks=[recorder],
        randomness=dict(seed=0),
        load_from=load_from,
        resume=resume,
        default_scope='mmdet',
    )


def _flat_tensors(state) -> List[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in _flat_tensors(state[key])]
    if isinstance(state, (list, tuple)):
        return [t for item in state for t in _flat_tensors(item)]
    return []


def test_resume_continues_exactly(tmp_path: Path):
    first = Recorder()
    make_runner(tmp_path / 'first', first).train()
    checkpoint = tmp_path / 'first' / 'iter_2.pth'
    assert checkpoint.is_file() and sorted(first.losses) == [0, 1, 2, 3]

    # the reason for the fix: plain torch.load (torch's default weights_only=True) refuses it
    refused = subprocess.run(
        [sys.executable, '-c', f'import torch; torch.load({str(checkpoint)!r})'],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and 'HistoryBuffer' in refused.stderr + refused.stdout

    second = Recorder()
    make_runner(tmp_path / 'second', second, load_from=str(checkpoint), resume=True).train()
    assert second.start_iter == 2
    saved = torch.load(checkpoint, map_location='cpu')  # allow-listed by mmdet_deformdetr
    saved_state = _flat_tensors(saved['optimizer']['state'])
    resumed_state = _flat_tensors(second.start_optimizer['state'])
    assert len(saved_state) == len(resumed_state) > 0
    assert all(torch.equal(a, b) for a, b in zip(saved_state, resumed_state))
    assert sorted(second.losses) == [2, 3]  # iterations 3 and 4, counted from 1
    for iteration in (2, 3):
        assert second.losses[iteration] == pytest.approx(
            first.losses[iteration], rel=1e-5, abs=1e-6
        )


def test_load_from_own_checkpoint_without_resume(tmp_path: Path):
    """load_from (no resume): weights only, iteration counter starts at 0."""
    first = Recorder()
    make_runner(tmp_path / 'first', first).train()
    second = Recorder()
    runner = make_runner(
        tmp_path / 'second', second, load_from=str(tmp_path / 'first' / 'iter_4.pth')
    )
    runner.train()
    assert second.start_iter == 0
    saved = torch.load(tmp_path / 'first' / 'iter_4.pth', map_location='cpu')['state_dict']
    assert set(saved) == set(runner.model.state_dict())
