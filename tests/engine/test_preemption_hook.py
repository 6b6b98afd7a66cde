"""PreemptionHook in one process, on a tiny runner: a signal raised during an iteration stops
training after it with a checkpoint of it and ``TrainingPreempted`` (exit status 75); an
epoch-based run resumed from the middle of an epoch skips the batches it had trained and ends
with the weights of an uninterrupted run. The real processes, ranks and launch scripts are in
tests/tools/test_preemption.py."""

import signal
from pathlib import Path
from typing import List

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner

from mmdet_deformdetr.engine import PREEMPTED_EXIT_CODE, PreemptionHook, TrainingPreempted
from mmdet_deformdetr.engine.atomic_checkpoint import PREEMPTED_AT_KEY, last_checkpoint_of

BATCHES_PER_EPOCH = 4


class _Linear(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = 'tensor'):
        output = self.linear(torch.stack(list(inputs)))
        return dict(loss=(output - 1).pow(2).mean()) if mode == 'loss' else [output]


class _SignalDuring(Hook):
    """Raise ``signum`` in this process during iteration ``at_iter`` (1-based)."""

    def __init__(self, at_iter: int, signum: int = signal.SIGUSR1) -> None:
        self.at_iter = at_iter
        self.signum = signum

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if runner.iter + 1 == self.at_iter:
            signal.raise_signal(self.signum)


class _CountSaves(Hook):
    def __init__(self) -> None:
        self.saved: List[int] = []

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        self.saved.append(checkpoint['meta']['iter'])


def _runner(work_dir: Path, name: str, by_epoch: bool, hooks=(), resume=False) -> Runner:
    data = [dict(inputs=torch.tensor([float(i), 1.0 - i])) for i in range(2 * BATCHES_PER_EPOCH)]
    train_cfg = (
        dict(by_epoch=True, max_epochs=3)
        if by_epoch
        else dict(by_epoch=False, max_iters=3 * BATCHES_PER_EPOCH)
    )
    torch.manual_seed(0)  # the same initial weights in every runner
    return Runner(
        model=_Linear(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=data,
            batch_size=2,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate'),
        ),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        train_cfg=train_cfg,
        default_hooks=dict(
            checkpoint=dict(type='AtomicCheckpointHook', interval=1 if by_epoch else 4),
            preemption=dict(type='PreemptionHook'),
        ),
        custom_hooks=list(hooks),
        resume=resume,
        randomness=dict(seed=0),
        experiment_name=f'{name}_{work_dir.name}',
        default_scope='mmdet',
    )


def _weights(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


def test_epoch_based_stop_mid_epoch_then_resume_is_exact(tmp_path):
    reference = _runner(tmp_path / 'reference', 'reference', by_epoch=True)
    reference.train()

    work_dir = tmp_path / 'run'
    previous = signal.getsignal(signal.SIGUSR1)
    runner = _runner(work_dir, 'stopped', by_epoch=True, hooks=[_SignalDuring(at_iter=6)])
    with pytest.raises(TrainingPreempted) as stop:
        runner.train()
    assert stop.value.code == PREEMPTED_EXIT_CODE and isinstance(stop.value, SystemExit)
    assert signal.getsignal(signal.SIGUSR1) == previous  # restored
    # iteration 6 = epoch 2, batch 2: a mid-epoch checkpoint outside the epoch rotation
    checkpoint = torch.load(work_dir / 'iter_6.pth', weights_only=False)
    assert checkpoint['meta']['epoch'] == 1 and checkpoint['meta']['iter'] == 6
    assert checkpoint['message_hub']['runtime_info'][PREEMPTED_AT_KEY] == dict(
        epoch=1, iter=6, batch=2
    )
    assert last_checkpoint_of(str(work_dir)) == str(work_dir / 'iter_6.pth')
    assert stop.value.checkpoint == str(work_dir / 'iter_6.pth')

    resumed = _runner(work_dir, 'resumed', by_epoch=True, resume=True)
    resumed.train()
    assert resumed.iter == 3 * BATCHES_PER_EPOCH
    final = _weights(work_dir / 'epoch_3.pth')
    expected = _weights(tmp_path / 'reference' / 'epoch_3.pth')
    assert all(torch.equal(final[key], expected[key]) for key in expected)
    # the next periodic save (epoch 2) replaced the preemption checkpoint
    assert not (work_dir / 'iter_6.pth').exists()
    assert sorted(path.name for path in work_dir.glob('*.pth')) == [
        'epoch_1.pth',
        'epoch_2.pth',
        'epoch_3.pth',
    ]


@pytest.mark.parametrize('at_iter', [4, 6])
def test_iteration_based_stop_saves_once(tmp_path, at_iter):
    """The stop after a periodic save (iteration 4) reuses it instead of saving twice."""
    saves = _CountSaves()
    runner = _runner(
        tmp_path, 'iters', by_epoch=False, hooks=[_SignalDuring(at_iter=at_iter), saves]
    )
    with pytest.raises(TrainingPreempted):
        runner.train()
    assert saves.saved == [at_iter]
    assert last_checkpoint_of(str(tmp_path)) == str(tmp_path / f'iter_{at_iter}.pth')


def test_a_signal_after_training_gets_the_previous_behaviour():
    """Handlers still installed after a run that ended with an exception hand the signal to
    the previous handler."""
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        hook = PreemptionHook(signals=['SIGUSR1'])

        class _Logger:
            def warning(self, message: str) -> None:
                raise AssertionError(message)

        hook._install_handlers(type('R', (), {'logger': _Logger()})())
        hook._active = False  # as after an exception out of runner.train()
        signal.raise_signal(signal.SIGUSR1)
        assert received == [signal.SIGUSR1]
        assert signal.getsignal(signal.SIGUSR1) is not hook._on_signal
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_unknown_signal_names_are_refused():
    with pytest.raises(ValueError, match='unknown signal'):
        PreemptionHook(signals=['SIGNOPE'])
    assert PreemptionHook(signals=['TERM', 'USR1']).signals == [signal.SIGTERM, signal.SIGUSR1]
