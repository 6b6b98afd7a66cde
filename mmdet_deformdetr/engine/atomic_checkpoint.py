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
"""

import os
import os.path as osp
from collections import deque
from typing import Any, Dict, List, Optional

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook

#: suffix of the temporary files a save writes before renaming them into place
PARTIAL_SUFFIX = '.writing'
#: message-hub key: the checkpoints a save deletes once it is complete
OUTDATED_KEY = 'outdated_ckpts'


def _fsync_path(path: str) -> None:
    """Flush ``path`` (a file, or a folder's entries after a rename) to the storage device."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # folders cannot be opened on Windows; the rename is atomic without it
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def partial_path(path: str) -> str:
    """The temporary name ``path`` is written under: ``<folder>/.<name>.writing``."""
    folder, name = osp.split(path)
    return osp.join(folder, f'.{name}{PARTIAL_SUFFIX}')


def publish(partial: str, path: str) -> None:
    """fsync ``partial``, rename it to ``path`` (replacing any file there), fsync the folder."""
    _fsync_path(partial)
    os.replace(partial, path)
    _fsync_path(osp.dirname(path) or '.')


def write_text_atomically(path: str, text: str) -> None:
    """Replace the file ``path`` by ``text``; a reader (or a kill) sees the old or the new text."""
    partial = partial_path(path)
    with open(partial, 'w') as file:
        file.write(text)
    publish(partial, path)


def remove_partial_files(folder: str) -> List[str]:
    """Delete the ``.*.writing`` files an interrupted save left in ``folder``; their names."""
    if not osp.isdir(folder):
        return []
    names = sorted(
        name
        for name in os.listdir(folder)
        if name.startswith('.') and name.endswith(PARTIAL_SUFFIX)
    )
    for name in names:
        os.remove(osp.join(folder, name))
    return names


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

    Takes exactly ``CheckpointHook``'s arguments (``interval``, ``by_epoch``, ``max_keep_ckpts``,
    ``save_best``, ``out_dir``, ``backend_args`` ...); the configs of this project select it as
    ``default_hooks.checkpoint``.
    """

    _local = False  # set in before_train: is the checkpoint folder on a local file system?

    def before_train(self, runner) -> None:
        super().before_train(runner)
        backend = getattr(self.file_backend, 'client', self.file_backend)  # FileClient wraps one
        self._local = isinstance(backend, LocalBackend)
        if not (is_main_process() and self._local):
            return
        removed = remove_partial_files(self.out_dir)
        if osp.abspath(runner.work_dir) != osp.abspath(self.out_dir):
            removed += remove_partial_files(runner.work_dir)
        if removed:
            runner.logger.warning(
                f'Removed {len(removed)} incomplete file(s) that an interrupted checkpoint save '
                f'left in {self.out_dir}: {", ".join(removed)}. The checkpoints themselves are '
                f'complete (they are renamed into place only once fully written).'
            )
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

    def _save_atomically(
        self, runner, out_dir: str, filename: str, *args: Any, **kwargs: Any
    ) -> None:
        """``runner.save_checkpoint(out_dir, filename, ...)``, written under a temporary name and
        renamed into place on a local file system (``runner.save_checkpoint`` writes on the main
        process only, so the rename does too)."""
        if not self._local:
            runner.save_checkpoint(out_dir, filename, *args, **kwargs)
            return
        path = osp.join(out_dir, filename)
        partial = partial_path(path)
        runner.save_checkpoint(osp.dirname(partial), osp.basename(partial), *args, **kwargs)
        if is_main_process():
            publish(partial, path)

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
        # recorded in the checkpoint: a run resumed from it deletes them if a kill came first
        # (inside a best save, the previous best is among the deferred removals)
        runner.message_hub.update_info(
            OUTDATED_KEY, outdated + list(getattr(self.file_backend, 'paths', []))
        )
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        self._save_atomically(
            runner,
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args,
        )
        if not is_main_process():
            return
        write_text_atomically(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for path in outdated:
            _remove_checkpoint(self.file_backend, path)  # deferred further inside a best save

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


def last_checkpoint_of(work_dir: str) -> Optional[str]:
    """What ``work_dir/last_checkpoint`` names; None when the file is missing or empty."""
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return None
    with open(pointer) as file:
        return file.read().strip() or None
