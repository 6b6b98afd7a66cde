"""What ``tools/train.py`` does around ``runner.train()`` so that long runs on clusters fail
clearly and resume by themselves; each step returns or maps to a documented exit status
(``docs/robustness.md``):

1. the rank-0 process takes the work dir's lock (``mmdet_deformdetr.engine.WorkDirLock``) before
   the runner writes anything there; a live run holding it is named and this one exits with 1;
   a stale lock is taken over with a log line;
2. ``--resume`` of a run whose schedule is complete says so and exits with 0 (mmengine would
   build everything, train zero iterations and exit 0 without a word);
3. files an interrupted save left (``.*.writing``) are removed before the runner writes its config
   copy and logs, so that a disk they filled has room again;
4. training: a stop on a signal (``TrainingPreempted``) exits with 75, after the process has
   written the file named by ``$DEFORMDETR_PREEMPTED_FILE`` when the launch scripts set it
   (``torchrun`` and ``srun`` report the exit status of one worker at best, see
   ``tools/dist_train.sh``); a checkpoint that cannot be written (``CheckpointWriteError``), or
   any other file of the run on a full or read-only disk, exits with 74 and a message naming the
   folder and the bytes free.
"""

import os
import os.path as osp
import sys
from typing import Callable, List, Optional

from mmengine.config import Config
from mmengine.runner import Runner

from mmdet_deformdetr.checkpoint import find_resume_checkpoint
from mmdet_deformdetr.checkpoint.safe_load import safe_load
from mmdet_deformdetr.engine import (
    CHECKPOINT_WRITE_EXIT_CODE,
    PREEMPTED_EXIT_CODE,
    CheckpointWriteError,
    TrainingPreempted,
    WorkDirLock,
    WorkDirLockedError,
    process_rank,
)
from mmdet_deformdetr.engine.atomic_files import (
    last_checkpoint_of,
    partial_files_note,
    remove_partial_files,
)
from mmdet_deformdetr.engine.disk_space import DISK_ERRNOS, write_failure_message

#: the variable naming the file a preempted worker creates (set by the launch scripts)
PREEMPTED_FILE_ENV = 'DEFORMDETR_PREEMPTED_FILE'
#: exit status when another live run holds the work dir
LOCKED_EXIT_CODE = 1


def resume_checkpoint(cfg: Config) -> Optional[str]:
    """The checkpoint ``--resume`` continues from (``tool_common.check_resume`` has checked
    it exists); None without ``--resume``."""
    if not cfg.get('resume', False):
        return None
    return cfg.get('load_from') or find_resume_checkpoint(cfg.work_dir)


def finished_message(cfg: Config, checkpoint: str) -> Optional[str]:
    """What to say when ``checkpoint`` is already at the end of ``cfg``'s schedule; None when
    there is training left (or the loop is not one of mmengine's two)."""
    train_cfg = cfg.get('train_cfg') or {}
    loop = train_cfg.get('type')
    if loop == 'IterBasedTrainLoop' or (loop is None and train_cfg.get('by_epoch') is False):
        key, unit = 'max_iters', 'iteration'
    elif loop == 'EpochBasedTrainLoop' or (loop is None and train_cfg.get('by_epoch')):
        key, unit = 'max_epochs', 'epoch'
    else:
        return None
    if '://' in checkpoint or key not in train_cfg:
        return None
    try:
        meta = safe_load(checkpoint, 'cpu', mmap=True).get('meta', {})
    except Exception:  # noqa: BLE001  (not readable here: mmengine will say why when it loads it)
        return None
    done, total = meta.get('iter' if unit == 'iteration' else 'epoch'), train_cfg[key]
    if not isinstance(done, int) or done < total:
        return None
    return (
        f'Nothing to train: {checkpoint} is the checkpoint of {unit} {done}, and the schedule '
        f'ends at {unit} {total} (train_cfg.{key}); the run in {cfg.work_dir} has finished. To '
        f'evaluate it: tools/test.py CONFIG {checkpoint}. To train longer, raise '
        f'train_cfg.{key} (and the end of the lr schedule) with --cfg-options and --resume again.'
    )


def _is_local(path: str) -> bool:
    return '://' not in path


def _checkpoint_folders(cfg: Config) -> List[str]:
    """The work dir, and the checkpoint hook's folder (mmengine's rule: ``out_dir`` joined with
    the work dir's name) when it is another local one."""
    folders = [cfg.work_dir]
    out_dir = ((cfg.get('default_hooks') or {}).get('checkpoint') or {}).get('out_dir')
    if out_dir and _is_local(out_dir):
        folders.append(osp.join(out_dir, osp.basename(cfg.work_dir.rstrip(osp.sep))))
    return folders


def _mark_preempted() -> None:
    path = os.environ.get(PREEMPTED_FILE_ENV)
    if path:
        try:
            with open(path, 'a'):
                pass
        except OSError as error:
            print(f'tools/train.py: could not create {path}: {error}', file=sys.stderr)


def _disk_error(cfg: Config, error: OSError) -> int:
    """Say what a full or unwritable disk stopped (as ``CheckpointWriteError`` does); 74.
    Other errors are re-raised."""
    if error.errno not in DISK_ERRNOS or not error.filename:
        raise error
    failure = write_failure_message(
        error, str(error.filename), None, last_checkpoint_of(cfg.work_dir), checkpoint=False
    )
    print(f'tools/train.py: error: {failure}', file=sys.stderr, flush=True)
    return CHECKPOINT_WRITE_EXIT_CODE


def train(cfg: Config, build_runner: Callable[[Config], Runner]) -> int:
    """Steps 1-4 of the module docstring around ``build_runner(cfg).train()``; the exit status."""
    rank = process_rank(cfg.get('launcher', 'none'))
    lock = WorkDirLock(cfg.work_dir) if rank == 0 and _is_local(cfg.work_dir) else None
    try:
        if lock is not None:
            lock.acquire()
    except WorkDirLockedError as error:
        print(f'tools/train.py: error: {error}', file=sys.stderr, flush=True)
        return LOCKED_EXIT_CODE
    except OSError as error:  # a work dir that cannot be written, from the start
        return _disk_error(cfg, error)
    try:
        checkpoint = resume_checkpoint(cfg)
        finished = finished_message(cfg, checkpoint) if checkpoint else None
        if finished:
            if rank == 0:
                print(f'tools/train.py: {finished}', flush=True)
            return 0
        notes = [lock.taken_over] if lock is not None and lock.taken_over else []
        if rank == 0:
            for folder in _checkpoint_folders(cfg):
                removed = remove_partial_files(folder)
                if removed:
                    notes.append(partial_files_note(folder, removed))
        runner = build_runner(cfg)
        for note in notes:
            runner.logger.warning(note)
        runner.train()
        return 0
    except TrainingPreempted:
        _mark_preempted()
        return PREEMPTED_EXIT_CODE
    except CheckpointWriteError:  # the hook has logged what happened and what to do
        return CHECKPOINT_WRITE_EXIT_CODE
    except OSError as error:
        # another file of the run (mmengine's log or scalar files) hit the full or read-only
        # disk before a checkpoint did: the same message, without a traceback
        return _disk_error(cfg, error)
    finally:
        if lock is not None:
            lock.release()
