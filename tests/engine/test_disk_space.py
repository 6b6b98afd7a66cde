"""Disk space of checkpoints, in one process: the arithmetic of what a run needs, the size
estimate against real files, the check before training, and a save that fails with ENOSPC (the
previous checkpoint stays, the partial file goes, the error says where and how much). A real
small file system and real processes: tests/tools/test_disk_full.py."""

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.fileio import LocalBackend
from mmengine.model import BaseModel
from mmengine.runner import Runner

from mmdet_deformdetr.engine import CheckpointWriteError, disk_space
from mmdet_deformdetr.engine.atomic_checkpoint import last_checkpoint_of
from mmdet_deformdetr.engine.disk_space import (
    checkpoint_bytes_estimate,
    checkpoints_at_peak,
    optimizer_state_bytes,
    required_space,
    saves_left,
    tensor_bytes,
    write_failure_message,
)


@pytest.mark.parametrize(
    'kept_now, saves, max_keep, delete_first, peak',
    [
        (0, 4, 1, False, 2),  # the new one is written before the old one goes
        (0, 4, 1, True, 1),
        (0, 4, 3, False, 4),
        (0, 2, 3, False, 2),  # never more than the run writes
        (0, 4, -1, False, 4),  # keep every checkpoint
        (2, 3, 2, False, 3),  # resumed with two kept
        (1, 0, 1, False, 1),  # nothing left to save
    ],
)
def test_checkpoints_at_peak(kept_now, saves, max_keep, delete_first, peak):
    assert checkpoints_at_peak(kept_now, saves, max_keep, delete_first) == peak
    assert required_space(100, kept_now, saves, max_keep, delete_first) == 100 * (peak - kept_now)


@pytest.mark.parametrize(
    'done, total, interval, save_last, left',
    [
        (0, 8, 2, True, 4),
        (3, 8, 2, True, 3),
        (0, 7, 2, True, 4),
        (0, 7, 2, False, 3),
        (8, 8, 2, True, 0),
    ],
)
def test_saves_left(done, total, interval, save_last, left):
    loop = SimpleNamespace(iter=done, max_iters=total, epoch=done, max_epochs=total)
    assert saves_left(loop, interval, by_epoch=False, save_last=save_last) == left
    assert saves_left(loop, interval, by_epoch=True, save_last=save_last) == left


def test_tensor_bytes_counts_shared_storage_once():
    base = torch.zeros(10, 10)
    assert tensor_bytes({'a': base, 'b': [base[2:], base.t()], 'c': 3}) == 400
    assert (
        tensor_bytes([torch.zeros(3, dtype=torch.float64), torch.zeros(2, dtype=torch.int32)]) == 32
    )


def test_optimizer_state_estimate_before_and_after_the_first_step():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    model[1].weight.requires_grad_(False)
    trained = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    adamw = torch.optim.AdamW(model.parameters())
    assert optimizer_state_bytes(adamw) == 2 * trained
    model(torch.randn(4, 64)).sum().backward()
    adamw.step()
    # after the step: exact (two moments + a scalar step per trained parameter)
    assert 2 * trained <= optimizer_state_bytes(adamw) <= 2 * trained + 64
    assert optimizer_state_bytes(torch.optim.SGD(model.parameters(), lr=0.1)) == 0
    assert optimizer_state_bytes(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)) == (
        trained
    )


class _Wide(BaseModel):
    """A few MB of weights: the pickle metadata of a checkpoint is small next to them."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)])

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        output = self.layers(torch.stack(list(inputs)))
        return dict(loss=output.pow(2).mean()) if mode == 'loss' else [output]


def _runner(work_dir: Path, name: str, **checkpoint) -> Runner:
    data = [dict(inputs=torch.full((256,), float(i))) for i in range(8)]
    return Runner(
        model=_Wide(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=data,
            batch_size=2,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'),
        ),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        train_cfg=dict(by_epoch=False, max_iters=6),
        default_hooks=dict(
            checkpoint=dict(
                type='AtomicCheckpointHook',
                interval=2,
                by_epoch=False,
                max_keep_ckpts=1,
                **checkpoint,
            )
        ),
        experiment_name=f'{name}_{work_dir.name}',
        default_scope='mmdet',
    )


def test_estimate_is_a_tight_lower_bound_of_the_file_size(tmp_path):
    runner = _runner(tmp_path, 'size')
    runner.train()
    estimate = checkpoint_bytes_estimate(runner.model, runner.optim_wrapper.optimizer)
    size = (tmp_path / 'iter_6.pth').stat().st_size
    assert estimate <= size <= estimate * 1.01 + 64 * 1024, (estimate, size)


def test_a_run_whose_checkpoints_cannot_fit_fails_before_training(tmp_path, monkeypatch):
    size = checkpoint_bytes_estimate(_Wide(), torch.optim.AdamW(_Wide().parameters()))
    # room for 1.5 checkpoints: the second save would need room for two (new before old)
    monkeypatch.setattr(disk_space, 'free_bytes', lambda folder: int(size * 1.5))
    runner = _runner(tmp_path, 'short')
    with pytest.raises(CheckpointWriteError) as error:
        runner.train()
    message = str(error.value)
    assert f'Not enough disk space for the checkpoints of this run in {tmp_path}' in message
    assert 'room for 1 checkpoint(s)' in message and 'will hold 2 at once' in message
    assert runner.iter == 0 and not list(tmp_path.glob('*.pth'))
    # with the outdated checkpoint deleted first, one is enough
    runner = _runner(tmp_path / 'delete_first', 'delete_first', delete_outdated_first=True)
    runner.train()
    assert sorted(p.name for p in (tmp_path / 'delete_first').glob('*.pth')) == ['iter_6.pth']


def test_a_save_that_runs_out_of_space_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    put = LocalBackend.put
    calls = []

    def full_disk_put(backend, obj, filepath):
        calls.append(filepath)
        if len(calls) < 2:
            return put(backend, obj, filepath)
        with open(filepath, 'wb') as file:  # what fits, then ENOSPC, as write(2) does
            file.write(obj[: len(obj) // 3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))

    monkeypatch.setattr(LocalBackend, 'put', full_disk_put)
    runner = _runner(tmp_path, 'enospc')
    with pytest.raises(CheckpointWriteError) as error:
        runner.train()
    message = str(error.value)
    assert f'Could not write the checkpoint {tmp_path}/iter_4.pth: the disk is full' in message
    assert f'Folder {tmp_path}:' in message and 'bytes free' in message
    needed = error.value.needed
    assert needed == checkpoint_bytes_estimate(runner.model, runner.optim_wrapper.optimizer)
    assert f'the checkpoint needs about {needed} bytes' in message
    assert f'The previous checkpoint {tmp_path}/iter_2.pth' in message
    assert last_checkpoint_of(str(tmp_path)) == str(tmp_path / 'iter_2.pth')
    assert sorted(p.name for p in tmp_path.iterdir() if 'pth' in p.name) == ['iter_2.pth']
    torch.load(tmp_path / 'iter_2.pth', weights_only=False)  # complete


@pytest.mark.parametrize(
    'code, words',
    [
        (errno.ENOSPC, ['the disk is full', 'Free space there']),
        (errno.EROFS, ['the file system is read-only', 'Make ', 'writable again']),
        (errno.EACCES, ['permission denied', 'writable again']),
    ],
)
def test_write_failure_message(tmp_path, code, words):
    error = write_failure_message(
        OSError(code, os.strerror(code)), str(tmp_path / 'iter_4.pth'), 2**20, None
    )
    assert all(word in str(error) for word in words), str(error)
    assert 'No checkpoint had been saved yet' in str(error)
    assert error.directory == str(tmp_path) and error.needed == 2**20
