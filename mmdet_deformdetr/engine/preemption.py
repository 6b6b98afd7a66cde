"""Stop on a scheduler's signal without losing training: ``PreemptionHook``.

Schedulers end jobs with a signal: SIGTERM on preemption, ``scancel`` or a time limit (Slurm,
Kubernetes), optionally a warning signal some time before the limit (Slurm's
``--signal=USR1@120``), SIGINT from Ctrl-C. By default each of them kills a Python process
(SIGINT raises ``KeyboardInterrupt``), and everything since the last periodic checkpoint is lost:
up to an epoch of COCO at the paper's settings.

With this hook, when the process receives one of ``signals``:

1. the handler only records the signal (and says so on stderr): the iteration in flight runs to
   its end, backward pass and optimizer step included;
2. after each iteration every rank contributes its flag to an all-reduce (max): all ranks see the
   same decision after the same iteration, whichever rank received the signal (a scheduler may
   signal one process, all of them, or only the launcher, which forwards it);
3. once agreed, the checkpoint of that iteration is written through ``AtomicCheckpointHook`` (to
   a temporary file renamed into place, ``last_checkpoint`` after it), unless the periodic save
   of the same iteration has just written it; a further signal meanwhile is noted and ignored,
   and a kill cannot leave a damaged checkpoint;
4. all ranks wait for the save (a second all-reduce, which also carries a failed save to every
   rank), run the ``after_run`` hooks (loggers and visualisation backends close their files), and
   raise ``TrainingPreempted``: a ``SystemExit`` with code ``PREEMPTED_EXIT_CODE`` (75,
   ``EX_TEMPFAIL`` of ``sysexits.h``: a temporary failure, retrying makes sense), so the process
   exits with 75 even outside ``tools/train.py``.

``tools/train.py --resume`` then continues from that iteration, exactly as from a periodic
checkpoint. Epoch-based loops (``EpochBasedTrainLoop``) stop mid-epoch too: the checkpoint records
how many batches of the epoch were done (``PREEMPTED_AT_KEY`` in the message hub) and the resumed
run skips them (loading them, as mmengine's ``IterBasedTrainLoop`` does when it resumes, so data
order and augmentation are those of an uninterrupted run), then finishes the epoch with its
checkpoint and validation. mmengine's loop numbers the batches of the resumed part of the epoch
from 1 in the log.

A signal during validation or a periodic save takes effect after the next training iteration;
one during the last iteration lets the run end normally (its last checkpoint is saved anyway).
The handlers are installed in ``before_train`` (main thread only) and the previous ones restored
when training ends; a signal arriving after a run ended with an exception gets the previous
behaviour (the handler restores it and re-sends the signal).

Cost: one all-reduce of one integer per iteration when training on several processes (nothing
on one process); ``docs/robustness.md`` gives the figures.
"""

import os
import signal
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.runner import IterBasedTrainLoop

from .atomic_checkpoint import PREEMPTED_AT_KEY, AtomicCheckpointHook

#: exit status of a process stopped by a signal after saving its checkpoint (``EX_TEMPFAIL``)
PREEMPTED_EXIT_CODE = 75
#: signals the hook handles by default: termination, Slurm's warning signal, Ctrl-C
DEFAULT_SIGNALS = ('SIGTERM', 'SIGUSR1', 'SIGINT')


class TrainingPreempted(SystemExit):
    """Training stopped on a signal after writing the checkpoint of the last iteration.

    A ``SystemExit`` with code ``PREEMPTED_EXIT_CODE``: uncaught, the process exits with 75 and
    no traceback. ``message`` says what happened; ``checkpoint`` is the checkpoint's path.
    """

    def __init__(self, message: str, checkpoint: Optional[str]) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return self.message


class _SkipFirstBatches:
    """The train dataloader, except that iterating it first loads and drops ``skip`` batches
    (those a preempted run had trained on in this epoch); ``len`` is what is left."""

    def __init__(self, dataloader: Any, skip: int) -> None:
        self.dataloader = dataloader
        self.skip = skip

    def __getattr__(self, name: str) -> Any:  # sampler, batch_sampler, dataset ...
        return getattr(self.dataloader, name)

    def __len__(self) -> int:
        return max(0, len(self.dataloader) - self.skip)

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.dataloader)
        for _ in range(self.skip):
            next(iterator, None)
        return iterator


def _signal_number(name: str) -> signal.Signals:
    try:
        return signal.Signals[name if name.startswith('SIG') else f'SIG{name}']
    except KeyError:
        raise ValueError(f'unknown signal {name!r}') from None


class PreemptionHook(Hook):
    """Finish the iteration, save its checkpoint on all ranks' agreement and exit with 75 when a
    signal of ``signals`` arrives (see the module docstring).

    Needs ``AtomicCheckpointHook`` as the checkpoint hook (every config of this project selects
    it as ``default_hooks.checkpoint``); without one it warns and leaves the signals alone.

    Args:
        signals: names of the signals that stop training (default SIGTERM, SIGUSR1, SIGINT).
            ``tools/slurm_train.sh`` asks Slurm for SIGUSR1 before the time limit.
    """

    # after every other after_train_iter hook: the iteration is logged, checked for NaN and
    # periodically saved before this hook decides
    priority = 'LOWEST'

    def __init__(self, signals: Sequence[str] = DEFAULT_SIGNALS) -> None:
        self.signals: List[signal.Signals] = [_signal_number(name) for name in signals]
        self.received: List[str] = []  # names of the signals received, in order
        self._previous: Dict[signal.Signals, Any] = {}
        self._active = False
        self._resumed_loader: Any = None

    # signal handling ----------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if not self._active:  # training is over (an exception ended it): the old behaviour
            self._restore_handlers()
            signal.raise_signal(signum)
            return
        self.received.append(name)
        what = (
            'finishing the current iteration, then saving a checkpoint and stopping'
            if len(self.received) == 1
            else 'already stopping; ignored (SIGKILL ends the run at once, which the atomic '
            'checkpoints make safe)'
        )
        os.write(2, f'[PreemptionHook] {name} received: {what}\n'.encode())

    def _install_handlers(self, runner) -> None:
        if threading.current_thread() is not threading.main_thread():
            runner.logger.warning(
                'PreemptionHook: training does not run in the main thread, where Python '
                'handles signals; preemption signals keep their default behaviour.'
            )
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        self._active = True

    def _restore_handlers(self) -> None:
        self._active = False
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    # hooks --------------------------------------------------------------------------------
    def before_train(self, runner) -> None:
        self.received.clear()
        if self._checkpoint_hook(runner) is None:
            runner.logger.warning(
                'PreemptionHook: no AtomicCheckpointHook (default_hooks.checkpoint) to save a '
                'checkpoint with; signals keep their default behaviour.'
            )
            return
        self._install_handlers(runner)

    def before_train_epoch(self, runner) -> None:
        """In an epoch-based run resumed from a preemption checkpoint, skip the batches of
        this epoch that were trained before the preemption."""
        done = runner.message_hub.get_info(PREEMPTED_AT_KEY)
        if not done:
            return
        runner.message_hub.update_info(PREEMPTED_AT_KEY, None)  # once
        loop = runner.train_loop
        if done.get('epoch') != runner.epoch or done.get('iter') != runner.iter:
            return  # not the epoch it was saved in (another loop, a changed config)
        skip = int(done['batch'])
        self._resumed_loader = loop.dataloader
        loop.dataloader = _SkipFirstBatches(loop.dataloader, skip)
        runner.logger.info(
            f'Resumed in the middle of epoch {runner.epoch + 1}: loading and skipping the '
            f'{skip} batch(es) trained before the preemption; {len(loop.dataloader)} to go.'
        )

    def after_train_epoch(self, runner) -> None:
        if self._resumed_loader is not None:
            runner.train_loop.dataloader = self._resumed_loader
            self._resumed_loader = None

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs: Optional[dict] = None
    ) -> None:
        if runner.iter + 1 >= runner.max_iters:
            # the last iteration: its checkpoint is saved anyway and the run ends normally (the
            # ranks then leave one by one, as without this hook, instead of all at once)
            return
        if not self._agreed(bool(self.received)):
            return
        checkpoint_hook = self._checkpoint_hook(runner)
        step = runner.iter + 1
        epoch_based = not isinstance(runner.train_loop, IterBasedTrainLoop)
        path, error = None, None
        if is_main_process():
            try:
                path = checkpoint_hook.save_on_preemption(
                    runner, batch_in_epoch=batch_idx + 1 if epoch_based else None
                )
            except Exception as exc:  # noqa: BLE001  (carried to every rank, then re-raised)
                error = exc
        failed = self._agreed(error is not None)  # also: nobody exits before the file is in place
        if error is not None:
            self._restore_handlers()
            raise error
        if failed:
            self._restore_handlers()
            raise RuntimeError(
                'the main process could not write the preemption checkpoint (its log says why)'
            )
        signals = ', '.join(self.received) or 'another rank'
        if self.received:
            where = f'received {signals}'
        else:
            where = 'another rank received a stop signal'
        message = (
            f'Training stopped after iteration {step} ({where}); its checkpoint '
            f'{path or checkpoint_hook.last_ckpt} is complete and work_dir/last_checkpoint names '
            f'it. Exit status {PREEMPTED_EXIT_CODE} (preempted, resumable): continue with '
            f'tools/train.py CONFIG --resume.'
        )
        runner.logger.warning(message)
        runner.call_hook('after_run')
        raise TrainingPreempted(message, path or checkpoint_hook.last_ckpt)

    def after_train(self, runner) -> None:
        self._restore_handlers()

    def after_run(self, runner) -> None:
        self._restore_handlers()

    # helpers ------------------------------------------------------------------------------
    @staticmethod
    def _agreed(flag: bool) -> bool:
        """``flag`` of any rank (one all-reduce when there are several ranks)."""
        if get_world_size() <= 1:
            return flag
        tensor = torch.tensor([int(flag)], dtype=torch.int32)
        all_reduce(tensor, op='max')
        return bool(tensor.item())

    @staticmethod
    def _checkpoint_hook(runner) -> Optional[AtomicCheckpointHook]:
        for hook in runner.hooks:
            if isinstance(hook, AtomicCheckpointHook):
                return hook
        return None
