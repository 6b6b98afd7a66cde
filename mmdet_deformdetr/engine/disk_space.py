"""Disk space for checkpoints: how much a run needs, and a clear error when a save fails.

A checkpoint holds the weights (``state_dict``, buffers included), the optimizer state (AdamW:
two tensors per trained parameter), the parameter schedulers and the message hub; its size is
the bytes of its tensors plus a little pickle metadata. ``AtomicCheckpointHook`` writes a new
checkpoint completely before it deletes the one that falls out of ``max_keep_ckpts``, so while
saving, the disk holds ``max_keep_ckpts + 1`` checkpoints of the run (with
``delete_outdated_first=True``, ``max_keep_ckpts``). ``required_space`` turns that into bytes for
the saves a run has left; the hook checks it before training and fails early when the disk cannot
hold what the run will write.

A save that fails (``ENOSPC`` on a full disk, ``EROFS`` / ``EACCES`` on a folder that stopped
being writable, ``EDQUOT`` over a quota) raises ``CheckpointWriteError`` naming the folder, the
bytes needed and the bytes free; the process exit status for it in ``tools/train.py`` is
``CHECKPOINT_WRITE_EXIT_CODE`` (74, ``EX_IOERR`` of ``sysexits.h``).
"""

import errno
import os
import os.path as osp
import shutil
from typing import Any, Dict, Iterable, Optional

import torch

#: exit status of ``tools/train.py`` when a checkpoint cannot be written (``EX_IOERR``)
CHECKPOINT_WRITE_EXIT_CODE = 74

#: optimizer state tensors per parameter, by optimizer class name (torch's optimizers)
_STATE_TENSORS = {
    'Adam': 2,
    'AdamW': 2,
    'Adamax': 2,
    'NAdam': 2,
    'RAdam': 2,
    'Adadelta': 2,
    'Adafactor': 2,
    'Adagrad': 1,
    'ASGD': 1,
    'Rprop': 2,
    'LBFGS': 2,
}


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (or there is no room for the ones a run will write).

    Attributes:
        directory: the checkpoint folder.
        needed: bytes the checkpoint (or the run) needs; None when unknown.
        free: bytes free in ``directory`` when the error was raised; None when unknown.
    """

    def __init__(
        self, message: str, directory: str, needed: Optional[int], free: Optional[int]
    ) -> None:
        super().__init__(message)
        self.directory = directory
        self.needed = needed
        self.free = free


def human_bytes(count: Optional[float]) -> str:
    """``count`` bytes as '512.0 MiB' (binary units); 'unknown' for None."""
    if count is None:
        return 'unknown'
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if abs(count) < 1024 or unit == 'GiB':
            return f'{count:.0f} {unit}' if unit == 'B' else f'{count:.1f} {unit}'
        count /= 1024
    return f'{count:.1f} TiB'


def free_bytes(directory: str) -> Optional[int]:
    """Bytes free for this user in ``directory`` (or its nearest existing parent); None when it
    cannot be read."""
    path = os.path.abspath(directory)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def tensor_bytes(obj: Any) -> int:
    """Bytes of the distinct tensor storages in ``obj`` (nested dicts / lists / tuples), as
    ``torch.save`` writes them (a storage shared by several tensors is written once)."""
    seen: Dict[int, int] = {}

    def visit(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            seen[storage.data_ptr() or id(storage)] = storage.nbytes()
        elif isinstance(item, dict):
            for value in item.values():
                visit(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                visit(value)

    visit(obj)
    return sum(seen.values())


def _trained_parameters(optimizer: torch.optim.Optimizer) -> Iterable[torch.Tensor]:
    for group in optimizer.param_groups:
        for param in group['params']:
            if param.requires_grad:
                yield param


def optimizer_state_bytes(optimizer: Optional[torch.optim.Optimizer]) -> int:
    """Bytes of ``optimizer``'s state: exact when it has state (after a step, after resuming),
    else estimated from its class (AdamW: two tensors per trained parameter; SGD: one with
    momentum, none without; unknown classes: two)."""
    if optimizer is None:
        return 0
    if optimizer.state:
        return tensor_bytes(list(optimizer.state.values()))
    name = type(optimizer).__name__
    if name == 'SGD':
        per_param = int(any(group.get('momentum', 0) for group in optimizer.param_groups))
    elif name == 'RMSprop':
        group = optimizer.param_groups[0]
        per_param = 1 + int(bool(group.get('momentum', 0))) + int(bool(group.get('centered')))
    else:
        per_param = _STATE_TENSORS.get(name, 2)
    return per_param * sum(p.numel() * p.element_size() for p in _trained_parameters(optimizer))


def checkpoint_bytes_estimate(
    model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], with_optimizer: bool = True
) -> int:
    """Bytes of a training checkpoint of ``model`` (and ``optimizer``'s state): its tensors.
    ``torch.save`` adds a little metadata (well under 1 %), so the file is slightly larger."""
    size = tensor_bytes(model.state_dict())
    if with_optimizer:
        size += optimizer_state_bytes(optimizer)
    return size


def checkpoints_at_peak(kept_now: int, saves_left: int, max_keep: int, delete_first: bool) -> int:
    """Checkpoints of the run on disk at the busiest moment of its remaining saves: ``kept_now``
    there already, ``saves_left`` more to write, at most ``max_keep`` kept (<= 0: all), and one
    more while a save is written before the outdated one is deleted (unless ``delete_first``)."""
    if saves_left <= 0:
        return kept_now
    if max_keep <= 0:
        return kept_now + saves_left
    total = kept_now + saves_left
    in_flight = 0 if delete_first or total <= max_keep else 1
    return min(max_keep, total) + in_flight


def required_space(
    checkpoint_size: int, kept_now: int, saves_left: int, max_keep: int, delete_first: bool
) -> int:
    """Free bytes the remaining saves need beyond the checkpoints already on disk."""
    peak = checkpoints_at_peak(kept_now, saves_left, max_keep, delete_first)
    return max(0, peak - kept_now) * checkpoint_size


def saves_left(loop: Any, interval: int, by_epoch: bool, save_last: bool) -> int:
    """Periodic saves a train loop still makes (``CheckpointHook``'s rule: every ``interval``
    epochs or iterations, plus the last one when ``save_last``)."""
    if by_epoch:
        done, total = loop.epoch, loop.max_epochs
    else:
        done, total = loop.iter, loop.max_iters
    if interval <= 0 or total <= done:
        return 0
    periodic = total // interval - done // interval
    return periodic + int(save_last and total % interval != 0)


_WHY = {
    errno.ENOSPC: 'the disk is full',
    errno.EDQUOT: 'the disk quota is exhausted',
    errno.EROFS: 'the file system is read-only',
    errno.EACCES: 'permission denied',
    errno.EPERM: 'permission denied',
}


def write_failure_message(
    error: OSError,
    path: str,
    needed: Optional[int],
    previous: Optional[str],
    checkpoint: bool = True,
) -> CheckpointWriteError:
    """The error for a write of ``path`` (a checkpoint, or with ``checkpoint=False`` any file of
    the run: a log, ``last_checkpoint``) that failed with ``error``; ``needed``: the bytes it
    needed, when known; ``previous``: the checkpoint ``last_checkpoint`` names."""
    directory = os.path.dirname(path) or '.'
    free = free_bytes(directory)
    reason = _WHY.get(error.errno, error.strerror or str(error))
    what = 'the checkpoint' if checkpoint else ''
    kept = (
        f'The previous checkpoint {previous} and work_dir/last_checkpoint are intact'
        if previous
        else 'No checkpoint had been saved yet'
    )
    if checkpoint:
        kept += '; the partial file was removed'
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = f'Make {directory} writable again (or set default_hooks.checkpoint.out_dir)'
    else:
        if needed and free is not None and needed > free:
            amount = f'{human_bytes(needed - free)} more'
        else:
            amount = 'space'
        fix = (
            f'Free {amount} there (or set default_hooks.checkpoint.out_dir to a larger disk; '
            f'docs/robustness.md)'
        )
    size = (
        f'; the checkpoint needs about {needed} bytes ({human_bytes(needed)})'
        if needed is not None
        else ''
    )
    code = errno.errorcode.get(error.errno, '')
    then = 'continue with tools/train.py CONFIG --resume' if previous else 'start the run again'
    message = (
        f'Could not write {what + " " if what else ""}{path}: {reason} ({code} {error.strerror})'
        f'. Folder {directory}: {free if free is not None else "?"} bytes free '
        f'({human_bytes(free)}){size}. {kept}. {fix}, then {then}.'
    )
    return CheckpointWriteError(message, directory, needed, free)


#: the errors of a disk that is full or not writable
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def space_shortage_message(
    directory: str, checkpoint_size: int, needed: int, free: int, peak: int, max_keep: int
) -> str:
    """What to say before training when ``free`` bytes cannot hold the ``needed`` ones."""
    fits = free // checkpoint_size if checkpoint_size else 0
    options = [f'free {human_bytes(needed - free)} in {directory}']
    if max_keep > 1 or max_keep <= 0:
        options.append('lower default_hooks.checkpoint.max_keep_ckpts')
    options.append('set default_hooks.checkpoint.out_dir to a larger disk')
    if max_keep >= 2:
        options.append(
            'or set default_hooks.checkpoint.delete_outdated_first=True (room for '
            'max_keep_ckpts checkpoints instead of one more; still safe against a kill with '
            'max_keep_ckpts >= 2)'
        )
    elif max_keep == 1:
        options.append(
            'or set default_hooks.checkpoint.delete_outdated_first=True (room for one '
            'checkpoint, but a kill during a save then leaves none)'
        )
    return (
        f'Not enough disk space for the checkpoints of this run in {directory}: '
        f'{free} bytes free ({human_bytes(free)}), room for {fits} checkpoint(s) of about '
        f'{checkpoint_size} bytes ({human_bytes(checkpoint_size)}), but the run will hold '
        f'{peak} at once (max_keep_ckpts={max_keep}, and each save writes the new checkpoint '
        f'before deleting the outdated one): {needed} bytes ({human_bytes(needed)}) needed. '
        f'Options: {"; ".join(options)}.'
    )


def check_space_before_training(hook: Any, runner: Any) -> None:
    """Fail before the first iteration when the remaining saves of ``hook`` (an
    ``AtomicCheckpointHook``) cannot fit in its folder; warn when only keeping every checkpoint
    (``max_keep_ckpts <= 0``) would not fit; else log what the saves need.

    Raises:
        CheckpointWriteError: with ``space_shortage_message``'s text.
    """
    model = getattr(runner.model, 'module', runner.model)  # DDP wrappers
    size = checkpoint_bytes_estimate(
        model,
        getattr(runner.optim_wrapper, 'optimizer', None),
        with_optimizer=hook.save_optimizer,
    )
    kept_now = sum(
        1
        for step in getattr(hook, 'keep_ckpt_ids', ())
        if osp.isfile(osp.join(hook.out_dir, hook.filename_tmpl.format(step)))
    )
    left = saves_left(runner.train_loop, hook.interval, hook.by_epoch, hook.save_last)
    max_keep, delete_first = hook.max_keep_ckpts, hook.delete_outdated_first
    needed = required_space(size, kept_now, left, max_keep, delete_first)
    free = free_bytes(hook.out_dir)
    if free is None or needed <= free:
        runner.logger.info(
            f'Checkpoints of about {human_bytes(size)} each; the {left} remaining save(s) need '
            f'{human_bytes(needed)} more in {hook.out_dir} ({human_bytes(free)} free).'
        )
        return
    peak = checkpoints_at_peak(kept_now, left, max_keep, delete_first)
    message = space_shortage_message(hook.out_dir, size, needed, free, peak, max_keep)
    if max_keep <= 0 and free >= size * 2:
        runner.logger.warning(f'{message} Training starts; free space before it runs out.')
        return
    runner.logger.error(message)
    raise CheckpointWriteError(message, hook.out_dir, needed, free)
