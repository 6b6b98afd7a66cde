"""Test-only hooks that inject faults into a real training process, loaded through the
``custom_imports`` of ``tiny_faults_coco.py`` (never by the package). Both are inert unless
``at_iter`` names an iteration (1-based, as mmengine's log counts), so one config serves the
faulty run, the resumed run and the uninterrupted reference.

- ``FaultKillDuringSaveHook``: SIGKILLs its own process at one moment of the checkpoint save of
  iteration ``at_iter``, described by what happens on disk, whichever checkpoint hook saves:

  ``before_write``  the checkpoint dict is built, nothing of it is written yet (mmengine's hook
                    has already deleted the outdated checkpoint then);
  ``mid_write``     half of the checkpoint's bytes are written (and flushed) to the file being
                    written;
  ``after_write``   all the checkpoint's bytes are written, before anything else happens;
  ``remove``        the first deletion of an outdated checkpoint is about to happen.

- ``FaultNonFiniteLossHook``: multiplies one loss term of iteration ``at_iter`` by NaN (or Inf),
  inside the model's ``loss`` so that the backward pass and the optimizer step see it.

- ``FaultSmallDiskHook``: where ``mount -t tmpfs`` is not permitted, makes the folder ``root``
  behave like a file system of ``limit_bytes`` for checkpoint writes (``LocalBackend.put`` writes
  what fits, then raises ``ENOSPC``) and for ``shutil.disk_usage``; a file ``.read_only`` in
  ``root`` makes the writes raise ``EROFS``. Inert while ``limit_bytes`` is 0.

Registration here (test code, names distinct from mmdet's) keeps the package's rule that it
registers only in ``mmdet_deformdetr/__init__.py``.
"""

import errno
import os
import shutil
import signal
import sys
from collections import namedtuple
from typing import Any

from mmdet.registry import HOOKS
from mmengine.fileio import LocalBackend
from mmengine.hooks import Hook

MOMENTS = ('before_write', 'mid_write', 'after_write', 'remove')


def _kill_self(what: str) -> None:
    print(f'fault_hooks: SIGKILL {what}', file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class FaultKillDuringSaveHook(Hook):
    """SIGKILL this process at ``moment`` of the save of iteration ``at_iter`` (0: never)."""

    priority = 'VERY_HIGH'  # armed in after_train_iter before any checkpoint hook runs

    def __init__(self, at_iter: int = 0, moment: str = 'before_write') -> None:
        if moment not in MOMENTS:
            raise ValueError(f'moment must be one of {MOMENTS}, got {moment!r}')
        self.at_iter = at_iter
        self.moment = moment

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 != self.at_iter:
            return
        what = f'at {self.moment} of the save of iteration {self.at_iter}'
        put, remove = LocalBackend.put, LocalBackend.remove

        def faulty_put(backend: LocalBackend, obj: bytes, filepath: Any) -> None:
            if self.moment == 'mid_write':
                with open(filepath, 'wb') as file:
                    file.write(obj[: len(obj) // 2])
                    file.flush()
                    os.fsync(file.fileno())
                _kill_self(f'{what} ({filepath})')
            put(backend, obj, filepath)
            if self.moment == 'after_write':
                _kill_self(f'{what} ({filepath})')

        def faulty_remove(backend: LocalBackend, filepath: Any) -> None:
            if self.moment == 'remove':
                _kill_self(f'{what} ({filepath})')
            remove(backend, filepath)

        # process-local and for this iteration's save only: the process dies in it
        LocalBackend.put, LocalBackend.remove = faulty_put, faulty_remove

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.moment == 'before_write' and checkpoint['meta'].get('iter') == self.at_iter:
            _kill_self(f'at before_write of the save of iteration {self.at_iter}')


@HOOKS.register_module()
class FaultNonFiniteLossHook(Hook):
    """Make loss term ``term`` of iteration ``at_iter`` (0: never) ``value`` times itself."""

    def __init__(self, at_iter: int = 0, term: str = 'loss_bbox', value: str = 'nan') -> None:
        self.at_iter = at_iter
        self.term = term
        self.factor = float(value)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if runner.iter + 1 != self.at_iter:
            return
        model = getattr(runner.model, 'module', runner.model)
        loss = model.loss

        def faulty_loss(*args: Any, **kwargs: Any) -> dict:
            losses = loss(*args, **kwargs)
            if self.term not in losses:
                raise KeyError(f'{self.term} is not a loss term: {sorted(losses)}')
            losses[self.term] = losses[self.term] * self.factor
            del model.loss  # once: back to the class's method
            return losses

        model.loss = faulty_loss


def used_bytes(root: str) -> int:
    """Bytes of the files under ``root`` (what a file system of its own would hold)."""
    return sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(root)
        for name in names
        if os.path.isfile(os.path.join(folder, name))
    )


@HOOKS.register_module()
class FaultSmallDiskHook(Hook):
    """Emulate a file system of ``limit_bytes`` at ``root`` (0: inert); see the module
    docstring. Installed when the hook is built, in the training process only."""

    def __init__(self, limit_bytes: int = 0, root: str = '') -> None:
        if not limit_bytes:
            return
        root = os.path.abspath(root)
        put, disk_usage = LocalBackend.put, shutil.disk_usage
        usage = namedtuple('usage', 'total used free')

        def inside(path: Any) -> bool:
            return os.path.abspath(os.fspath(path)).startswith(root + os.sep)

        def small_put(backend: LocalBackend, obj: bytes, filepath: Any) -> None:
            if not inside(filepath):
                return put(backend, obj, filepath)
            if os.path.exists(os.path.join(root, '.read_only')):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(filepath))
            free = max(0, limit_bytes - used_bytes(root))
            if len(obj) <= free:
                return put(backend, obj, filepath)
            with open(filepath, 'wb') as file:
                file.write(obj[:free])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))

        def small_disk_usage(path: Any) -> Any:
            if not (inside(path) or os.path.abspath(os.fspath(path)) == root):
                return disk_usage(path)
            used = used_bytes(root)
            return usage(limit_bytes, used, max(0, limit_bytes - used))

        # process-local, for the fault tests only
        LocalBackend.put, shutil.disk_usage = small_put, small_disk_usage
