"""AtomicCheckpointHook in one process: the same files and records as mmengine's CheckpointHook
(interval, max_keep_ckpts, save_best), written in a different order. The kills are in
tests/tools/test_kill_during_save.py."""

import os
from pathlib import Path
from typing import List

import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.runner import Runner

from mmdet_deformdetr.engine import atomic_checkpoint
from mmdet_deformdetr.engine.atomic_checkpoint import (
    partial_path,
    remove_partial_files,
    write_text_atomically,
)

SCORES = [0.1, 0.3, 0.2, 0.5, 0.4]  # validation score after each epoch: new bests at 1, 2, 4


class _Linear(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = 'tensor'):
        output = self.linear(torch.stack(list(inputs)))
        return dict(loss=output.pow(2).mean()) if mode == 'loss' else [output]


class _ScheduledScore(BaseMetric):
    """'acc' = SCORES[epoch - 1], whatever the model predicts."""

    def __init__(self) -> None:
        super().__init__()
        self.evaluations = 0

    def process(self, data_batch, data_samples) -> None:
        self.results.append(0)

    def compute_metrics(self, results) -> dict:
        self.evaluations += 1
        return dict(acc=SCORES[self.evaluations - 1])


def _train(work_dir: Path, hook_type: str) -> Runner:
    data = [dict(inputs=torch.full((2,), float(i))) for i in range(4)]
    loader = dict(
        dataset=data,
        batch_size=2,
        sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=dict(type='default_collate'),
    )
    runner = Runner(
        model=_Linear(),
        work_dir=str(work_dir),
        train_dataloader=loader,
        val_dataloader=loader,
        val_evaluator=[_ScheduledScore()],
        val_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=True, max_epochs=len(SCORES), val_interval=1),
        default_hooks=dict(
            checkpoint=dict(
                type=hook_type, interval=1, max_keep_ckpts=2, save_best='acc', rule='greater'
            )
        ),
        # a distinct name: runners of one second would share a message hub (and its best score)
        experiment_name=str(work_dir).replace('/', '_'),
        default_scope='mmdet',
    )
    runner.train()
    return runner


def _files(work_dir: Path) -> List[str]:
    """The files in ``work_dir`` but the config dump (``<timestamp>.py``)."""
    return sorted(
        path.name for path in work_dir.iterdir() if path.is_file() and path.suffix != '.py'
    )


def test_same_files_and_records_as_mmengine(tmp_path):
    ours = _train(tmp_path / 'ours', 'AtomicCheckpointHook')
    theirs = _train(tmp_path / 'theirs', 'CheckpointHook')
    assert (
        _files(tmp_path / 'ours')
        == _files(tmp_path / 'theirs')
        == ['best_acc_epoch_4.pth', 'epoch_4.pth', 'epoch_5.pth', 'last_checkpoint']
    )
    assert (tmp_path / 'ours' / 'last_checkpoint').read_text() == str(
        tmp_path / 'ours' / 'epoch_5.pth'
    )
    for key in ('keep_ckpt_ids', 'best_score'):
        assert ours.message_hub.get_info(key) == theirs.message_hub.get_info(key)
    assert Path(ours.message_hub.get_info('best_ckpt')).name == 'best_acc_epoch_4.pth'


def test_old_files_are_deleted_only_after_the_new_one_is_in_place(tmp_path, monkeypatch):
    """At every rename into place, what the save will delete still exists."""
    work_dir = tmp_path / 'ours'
    seen = []
    publish = atomic_checkpoint.publish

    def recording_publish(partial: str, path: str) -> None:
        seen.append((Path(path).name, _files(work_dir)))
        publish(partial, path)

    monkeypatch.setattr(atomic_checkpoint, 'publish', recording_publish)
    _train(work_dir, 'AtomicCheckpointHook')
    on_disk = dict(seen)  # name -> the files there when it was renamed into place (last time)
    # epoch 3 (max_keep_ckpts=2) falls out when epoch_5 is saved; the best of epoch 2 when epoch 4
    # is the new best
    assert 'epoch_3.pth' in on_disk['epoch_5.pth']
    assert 'best_acc_epoch_2.pth' in on_disk['best_acc_epoch_4.pth']
    # the only partial file at any rename is the one being renamed: none is left behind
    assert all(
        [name for name in files if name.startswith('.')] == [f'.{published}.writing']
        for published, files in seen
    ), seen


def test_write_text_atomically_keeps_the_old_text_when_interrupted(tmp_path, monkeypatch):
    pointer = tmp_path / 'last_checkpoint'
    write_text_atomically(str(pointer), 'old')
    assert pointer.read_text() == 'old'

    def interrupted(*args) -> None:
        raise OSError('interrupted')

    monkeypatch.setattr(os, 'replace', interrupted)  # the os module atomic_files.py uses
    with pytest.raises(OSError):
        write_text_atomically(str(pointer), 'new')
    assert pointer.read_text() == 'old'
    assert Path(partial_path(str(pointer))).read_text() == 'new'
    monkeypatch.undo()
    write_text_atomically(str(pointer), 'new')
    assert pointer.read_text() == 'new' and not Path(partial_path(str(pointer))).exists()


def test_remove_partial_files_removes_only_ours(tmp_path):
    for name in (
        '.iter_4.pth.writing',
        '.last_checkpoint.writing',
        'iter_2.pth',
        'x.writing',
        '.hidden',
    ):
        (tmp_path / name).write_text('')
    assert remove_partial_files(str(tmp_path)) == [
        '.iter_4.pth.writing',
        '.last_checkpoint.writing',
    ]
    assert _files(tmp_path) == ['.hidden', 'iter_2.pth', 'x.writing']
    assert remove_partial_files(str(tmp_path / 'missing')) == []
