"""Checkpoints that a kill at any moment of a save cannot cost: ``AtomicCheckpointHook``.

Why not mmengine's ``CheckpointHook`` (0.10.7): its ``_save_checkpoint_with_step``

1. deletes the oldest kept checkpoint first (``max_keep_ckpts``),
2. writes the new one in place (``LocalBackend.put``: ``open(path, 'wb').write(...)``),
3. rewrites ``work_dir/last_checkpoint`` in place last,

so a SIGKILL after 1 with ``max_keep_ckpts=1`` leaves no checkpoint at all, one during 2 leaves a
truncated ``iter_N.pth``, and one between 2 and 3 leaves ``last_checkpoint`` naming the deleted
file: ``--resume`` fails in all three (``_save_best_checkpoint`` also deletes the previous best
before writing the new one). Tested in ``tests/engine/test_atomic_checkpoint.py`` with real
SIGKILLs of a training process.

This hook keeps mmengine's rules (interval, ``max_keep_ckpts``, ``save_best``, file names, the
``keep_ckpt_ids`` / ``last_ckpt`` records in the message hub) and changes only the order and the
way files are written, on a local file system:

1. the checkpoint is written to ``.<name>.writing`` in the same folder, fsync'ed, and renamed
   into place with ``os.replace`` (atomic on POSIX and Windows within one file system): a
   checkpoint file either is complete or does not exist under its name;
2. ``last_checkpoint`` is replaced the same way, only after the file it names is in place;
3. outdated checkpoints (``max_keep_ckpts``, the previous best) are deleted only after 1 and 2.

A kill therefore leaves at most a ``.writing`` file (removed, with a log line, when training
restarts) next to the previous good checkpoint that ``last_checkpoint`` still names, or, between
2 and 3, outdated checkpoints not deleted yet: each checkpoint records in its message hub
(``outdated_ckpts``) what its save is about to delete, and a run resumed from it deletes those.

On other storage backends (``backend_args`` for petrel, S3 ...) an object ``put`` is already all
or nothing; there only the order changes (deletions last). The fsync protects against a machine
crash, not a killed process (the page cache survives the process); it costs one flush per save.

Disk space (``disk_space.py``): the order above needs room for ``max_keep_ckpts + 1``
checkpoints while saving. Before training the hook checks that the folder can hold what the
remaining saves will write and fails early when it cannot (``check_free_space``);
``delete_outdated_first=True`` deletes the outdated checkpoint before writing the new one (room
for ``max_keep_ckpts``; with ``max_keep_ckpts=1`` a kill mid-save then leaves no checkpoint). A
save that fails (full disk, read-only or unwritable folder) removes its partial file and raises
``CheckpointWriteError`` naming the folder, the bytes needed and free; ``last_checkpoint`` still
names the previous checkpoint. The start-up clean-up of partial files is skipped when another live
run holds the work dir's lock (``work_dir_lock.py``): those files may be its saves in progress.

Preemption (``preemption.py``): ``save_on_preemption`` writes the checkpoint of the current
iteration on request. With ``by_epoch=False`` it is a checkpoint like the periodic ones (in the
``max_keep_ckpts`` rotation); with ``by_epoch=True`` (file names count epochs) it is
``iter_<N>.pth``, outside the rotation, deleted by the next periodic save.
"""

import os.path as osp
from collections import deque
from typing import Any, Dict, List, Optional

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook

from .atomic_files import (  # noqa: F401  (partial_path, PARTIAL_SUFFIX: re-exported)
    PARTIAL_SUFFIX,
    last_checkpoint_of,
    partial_files_note,
    partial_path,
    publish,
    remove_partial_files,
    remove_quietly,
    write_text_atomically,
)
from .disk_space import check_space_before_training, tensor_bytes, write_failure_message
from .work_dir_lock import held_by_another_run

#: message-hub key: the checkpoints a save deletes once it is complete
OUTDATED_KEY = 'outdated_ckpts'
#: message-hub key: the mid-epoch preemption checkpoint the next periodic save deletes
PREEMPTION_CKPT_KEY = 'preemption_ckpt'
#: message-hub key: where in its epoch a preemption checkpoint was saved (epoch, iter, batch)
PREEMPTED_AT_KEY = 'preempted_at'


def _remove_checkpoint(backend: Any, path: str) -> None:
    if backend.isfile(path):
        backend.remove(path)
    elif backend.isdir(path):  # checkpoints saved by DeepSpeed are folders
        backend.rmtree(path)


class _DeferredRemovals:
    """A file backend whose ``remove`` / ``rmtree`` only record the path; ``flush`` deletes."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.paths: List[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def remove(self, path: str) -> None:
        self.paths.append(path)

    def rmtree(self, path: str) -> None:
        self.paths.append(path)

    def flush(self) -> None:
        for path in self.paths:
            _remove_checkpoint(self.backend, path)
        self.paths.clear()


class _AtomicSavingRunner:
    """The runner, except that ``save_checkpoint`` goes through the hook's atomic save."""

    def __init__(self, runner: Any, hook: 'AtomicCheckpointHook') -> None:
        self.wrapped_runner = runner
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped_runner, name)

    def save_checkpoint(self, out_dir: str, filename: str, *args: Any, **kwargs: Any) -> None:
        self._hook._save_atomically(self.wrapped_runner, out_dir, filename, *args, **kwargs)


class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose saves survive a kill at any moment (see the module docstring).

    Takes ``CheckpointHook``'s arguments (``interval``, ``by_epoch``, ``max_keep_ckpts``,
    ``save_best``, ``out_dir``, ``backend_args`` ...); the configs of this project select it as
    ``default_hooks.checkpoint``. Two more:

    Args:
        check_free_space: before training, fail when the checkpoint folder cannot hold the
            checkpoints the remaining saves will keep (local folders only).
        delete_outdated_first: delete the checkpoint that falls out of ``max_keep_ckpts`` before
            writing the new one (room for ``max_keep_ckpts`` checkpoints instead of one more;
            with ``max_keep_ckpts=1`` a kill during a save then leaves no checkpoint).
    """

    _local = False  # set in before_train: is the checkpoint folder on a local file system?
    _pending_bytes: Optional[int] = None  # tensor bytes of the checkpoint being saved

    def __init__(
        self,
        *args: Any,
        check_free_space: bool = True,
        delete_outdated_first: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.check_free_space = check_free_space
        self.delete_outdated_first = delete_outdated_first

    def before_train(self, runner) -> None:
        super().before_train(runner)
        backend = getattr(self.file_backend, 'client', self.file_backend)  # FileClient wraps one
        self._local = isinstance(backend, LocalBackend)
        if not (is_main_process() and self._local):
            return
        self._remove_partial_files(runner)
        outdated = [
            path
            for path in runner.message_hub.get_info(OUTDATED_KEY, [])
            if self.file_backend.exists(path)
        ]
        for path in outdated:
            _remove_checkpoint(self.file_backend, path)
        if outdated:
            runner.logger.info(
                f'Deleted the outdated checkpoint(s) that an interrupted save had '
                f'not deleted yet: {", ".join(outdated)}.'
            )
        if self.delete_outdated_first and self.max_keep_ckpts == 1:
            runner.logger.warning(
                'delete_outdated_first=True with max_keep_ckpts=1: each save deletes the only '
                'checkpoint before writing the next, so a kill during a save leaves none.'
            )
        if self.check_free_space:
            check_space_before_training(self, runner)

    def _remove_partial_files(self, runner) -> None:
        """Delete what interrupted saves left, unless another live run holds the work dir
        (its saves in progress look the same)."""
        other = held_by_another_run(runner.work_dir)
        if other is not None:
            runner.logger.warning(
                f'Not removing incomplete checkpoint files from {self.out_dir}: another live run '
                f'holds the work dir ({other}) and may be writing them.'
            )
            return
        removed = remove_partial_files(self.out_dir)
        if osp.abspath(runner.work_dir) != osp.abspath(self.out_dir):
            removed += remove_partial_files(runner.work_dir)
        if removed:
            runner.logger.warning(partial_files_note(self.out_dir, removed))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending_bytes = tensor_bytes(checkpoint)

    def _save_atomically(
        self, runner, out_dir: str, filename: str, *args: Any, **kwargs: Any
    ) -> None:
        """``runner.save_checkpoint(out_dir, filename, ...)``, written under a temporary name and
        renamed into place on a local file system (``runner.save_checkpoint`` writes on the main
        process only, so the rename does too). A write that fails removes its partial file and
        raises ``CheckpointWriteError``."""
        if not self._local:
            runner.save_checkpoint(out_dir, filename, *args, **kwargs)
            return
        path = osp.join(out_dir, filename)
        partial = partial_path(path)
        previous = last_checkpoint_of(runner.work_dir)
        self._pending_bytes = None
        try:
            runner.save_checkpoint(osp.dirname(partial), osp.basename(partial), *args, **kwargs)
            if is_main_process():
                publish(partial, path)
        except OSError as error:
            if not is_main_process():
                raise
            remove_quietly(partial)
            failure = write_failure_message(error, path, self._pending_bytes, previous)
            runner.logger.error(str(failure))
            raise failure from error

    def _advance_kept(self, runner, step: int) -> List[str]:
        """Record ``step`` among the kept checkpoints (``max_keep_ckpts``) as mmengine does, and
        return the paths that fall out of the list, to delete after the save."""
        if self.max_keep_ckpts <= 0:
            return []
        kept: deque = self.keep_ckpt_ids
        if kept and kept[-1] == step:  # saved again at the same step (after a new best)
            return []
        outdated = [kept.popleft()] if len(kept) == self.max_keep_ckpts else []
        kept.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(kept))
        return [
            self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            for old in outdated
        ]

    def _save_checkpoint_with_step(self, runner, step: int, meta: Dict[str, Any]) -> None:
        """Write the checkpoint of ``step`` atomically, then ``last_checkpoint``, then delete the
        outdated checkpoints (mmengine 0.10.7 deletes first and writes in place)."""
        runner = getattr(runner, 'wrapped_runner', runner)  # called from _save_best_checkpoint
        outdated = self._advance_kept(runner, step)
        preempted = runner.message_hub.get_info(PREEMPTION_CKPT_KEY)
        if preempted:  # a periodic save supersedes the mid-epoch preemption checkpoint
            runner.message_hub.update_info(PREEMPTION_CKPT_KEY, None)
            outdated.append(preempted)
        filename = self.filename_tmpl.format(step)
        outdated = [path for path in outdated if osp.basename(path) != filename]
        if self.delete_outdated_first and is_main_process():
            for path in outdated:
                _remove_checkpoint(self.file_backend, path)
            outdated = []
        # recorded in the checkpoint: a run resumed from it deletes them if a kill came first
        # (inside a best save, the previous best is among the deferred removals)
        runner.message_hub.update_info(
            OUTDATED_KEY, outdated + list(getattr(self.file_backend, 'paths', []))
        )
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        self._write_checkpoint(runner, filename, meta, by_epoch=self.by_epoch)
        if not is_main_process():
            return
        for path in outdated:
            _remove_checkpoint(self.file_backend, path)  # deferred further inside a best save

    def _write_checkpoint(self, runner, filename: str, meta: Dict[str, Any], by_epoch: bool):
        """The atomic save of ``filename``, then ``last_checkpoint`` naming it."""
        self._save_atomically(
            runner,
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=by_epoch,
            backend_args=self.backend_args,
            **self.args,
        )
        if not is_main_process():
            return
        path = self.file_backend.join_path(self.out_dir, filename)
        pointer = osp.join(runner.work_dir, 'last_checkpoint')
        try:
            write_text_atomically(pointer, path)
        except OSError as error:
            remove_quietly(partial_path(pointer))
            failure = write_failure_message(error, pointer, 0, last_checkpoint_of(runner.work_dir))
            runner.logger.error(f'{failure} ({path} itself is complete.)')
            raise failure from error

    def save_on_preemption(self, runner, batch_in_epoch: Optional[int] = None) -> str:
        """Write the checkpoint of the iteration that just ended (``PreemptionHook``); its path.

        Args:
            batch_in_epoch: in an epoch-based loop, the batches of the current epoch done
                (recorded so that the resumed run skips them); None in an iteration-based one.
        """
        step = runner.iter + 1
        if batch_in_epoch is None and not self.by_epoch:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(step))
            if self.last_ckpt == path and self.file_backend.exists(path):
                return path  # the periodic save of this iteration has just written it
        done = None if batch_in_epoch is None else dict(epoch=runner.epoch, iter=step)
        if done is not None:
            done['batch'] = batch_in_epoch
        runner.message_hub.update_info(PREEMPTED_AT_KEY, done)
        runner.logger.info(f'Saving checkpoint at {step} iterations (stop requested)')
        meta = dict(epoch=runner.epoch, iter=step)
        try:
            if not self.by_epoch:
                self._save_checkpoint_with_step(runner, step, meta)
                return self.last_ckpt
            # file names count epochs: this one is iter_<step>.pth, outside the rotation
            filename = f'iter_{step}.pth'
            path = self.file_backend.join_path(self.out_dir, filename)
            previous = runner.message_hub.get_info(PREEMPTION_CKPT_KEY)
            outdated = [previous] if previous and previous != path else []
            runner.message_hub.update_info(PREEMPTION_CKPT_KEY, path)
            runner.message_hub.update_info(OUTDATED_KEY, outdated)
            self._write_checkpoint(runner, filename, meta, by_epoch=False)
            self.last_ckpt = path
            if is_main_process():
                for old in outdated:
                    _remove_checkpoint(self.file_backend, old)
            return path
        finally:
            runner.message_hub.update_info(PREEMPTED_AT_KEY, None)

    def _save_best_checkpoint(self, runner, metrics: Dict[str, Any]) -> None:
        """mmengine's best-checkpoint rules, with the new best written atomically and the previous
        best deleted only after it (mmengine deletes it first)."""
        backend = self.file_backend
        removals = _DeferredRemovals(backend)
        self.file_backend = removals
        try:
            super()._save_best_checkpoint(_AtomicSavingRunner(runner, self), metrics)
        finally:
            self.file_backend = backend
        if is_main_process():
            removals.flush()
