"""tools/train.py on a small file system (a tmpfs where ``mount`` is permitted, else the write
shim of tests/helpers/fault_hooks.py): a save that runs out of space keeps the previous
checkpoint and ``last_checkpoint``, leaves no partial file, stops with exit status 74 and a
message naming the folder, the bytes needed and free, and ``--resume`` ends bitwise equal to an
uninterrupted run once space is freed; a disk with room for one checkpoint only is refused
before training; a work dir that turns read-only is reported at the next write."""

import re

import pytest
import torch

from tests.helpers.faults import (
    MAX_ITERS,
    TrainingProcess,
    load,
    run_train,
    training_state_differences,
)
from tests.helpers.small_disk import SmallDisk

pytestmark = pytest.mark.slow

CHECKPOINT_WRITE_FAILED = 74
# a checkpoint of tiny_faults_coco.py (ResNet-18 + AdamW state): 129 MiB; the disk holds 2.5
CHECKPOINT_BYTES = 135_413_000


def _saved(output: str):
    return [int(step) for step in re.findall(r'Saving checkpoint at (\d+) iterations', output)]


def test_full_disk_mid_run_keeps_the_last_checkpoint_and_resume_is_exact(tmp_path, fault_reference):
    with SmallDisk(tmp_path / 'disk', int(CHECKPOINT_BYTES * 2.5)) as disk:
        work_dir = disk.path / 'run'
        with TrainingProcess.train(work_dir, *disk.options) as run:
            run.wait_for(f'Iter(train) [3/{MAX_ITERS}]')  # iter_2.pth is complete
            filler = disk.fill(leave_free=CHECKPOINT_BYTES // 2)  # another job fills the disk
            returncode = run.wait()
            output = run.output
        assert returncode == CHECKPOINT_WRITE_FAILED, output[-4000:]
        failed = _saved(output)[-1]
        kept = failed - 2
        message = re.search(r'Could not write the checkpoint .*', output).group(0)
        assert message.startswith(
            f'Could not write the checkpoint {work_dir}/iter_{failed}.pth: the disk is full'
        )
        free, needed = re.search(
            rf'Folder {work_dir}: (\d+) bytes free .*; the checkpoint needs about (\d+) '
            r'bytes',
            message,
        ).groups()
        assert (
            int(free) < int(needed)
            and abs(int(needed) - CHECKPOINT_BYTES) < 0.01 * CHECKPOINT_BYTES
        )
        assert (
            f'The previous checkpoint {work_dir}/iter_{kept}.pth and work_dir/last_checkpoint'
            in message
        )
        assert 'Traceback' not in output
        # the log file has it too, not only the console
        log_files = list(work_dir.glob('*/*.log'))
        assert any('Could not write the checkpoint' in path.read_text() for path in log_files)
        assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / f'iter_{kept}.pth')
        assert load(work_dir / f'iter_{kept}.pth')['meta']['iter'] == kept
        assert not list(work_dir.glob('.*.writing')) and not (work_dir / 'train.lock').exists()

        filler.unlink()  # space freed: resume
        resumed = run_train(work_dir, *disk.options, resume='auto')
        assert f'resumed epoch: 0, iter: {kept}' in resumed
        assert (
            training_state_differences(
                work_dir / f'iter_{MAX_ITERS}.pth', fault_reference / f'iter_{MAX_ITERS}.pth'
            )
            == []
        )


def test_a_disk_with_room_for_one_checkpoint_is_refused_before_training(tmp_path):
    with SmallDisk(tmp_path / 'disk', int(CHECKPOINT_BYTES * 1.5)) as disk:
        output = run_train(disk.path / 'run', *disk.options, expect_rc=CHECKPOINT_WRITE_FAILED)
    assert f'Not enough disk space for the checkpoints of this run in {disk.path}/run' in output
    assert 'room for 1 checkpoint(s)' in output and 'the run will hold 2 at once' in output
    assert 'Iter(train)' not in output and 'Traceback' not in output


def test_a_work_dir_that_turns_read_only_is_reported_at_the_next_write(tmp_path):
    with SmallDisk(tmp_path / 'disk', int(CHECKPOINT_BYTES * 3)) as disk:
        work_dir = disk.path / 'run'
        with TrainingProcess.train(work_dir, *disk.options) as run:
            run.wait_for(f'Iter(train) [3/{MAX_ITERS}]')
            disk.make_read_only(work_dir)
            returncode = run.wait()
            output = run.output
        assert returncode == CHECKPOINT_WRITE_FAILED, output[-4000:]
        # mmengine's scalar log (reopened at each logged iteration) or the next checkpoint save,
        # whichever writes first
        written = re.search(
            rf'Could not write (the checkpoint )?({work_dir}/\S+): the file system is read-only',
            output,
        )
        assert written, output[-3000:]
        folder = written.group(2).rsplit('/', 1)[0]
        assert f'Make {folder} writable again' in output and 'Traceback' not in output
        kept = (work_dir / 'last_checkpoint').read_text()  # a save before the folder turned
        assert kept in [f'{work_dir}/iter_{step}.pth' for step in _saved(output)]
        torch.load(kept, map_location='cpu', weights_only=False)
