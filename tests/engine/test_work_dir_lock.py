"""WorkDirLock in one process: a live holder is refused and named, a stale lock (dead PID, reused
PID, a host that rebooted, an earlier run of the same Slurm job, a stopped heartbeat) is taken
over and said so, another host's fresh lock is refused with advice. Real training processes:
tests/tools/test_work_dir_guard.py."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmdet_deformdetr.engine import WorkDirLock, WorkDirLockedError, process_rank
from mmdet_deformdetr.engine.work_dir_lock import LOCK_NAME, held_by_another_run, this_process


def _write_lock(work_dir: Path, age_s: float = 0.0, **changes) -> Path:
    owner = dict(this_process(), **changes)
    path = work_dir / LOCK_NAME
    work_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(owner))
    if age_s:
        stamp = time.time() - age_s
        os.utime(path, (stamp, stamp))
    return path


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, '-c', 'pass'])
    process.wait()
    return process.pid


def test_lock_records_the_run_and_is_released(tmp_path):
    with WorkDirLock(str(tmp_path / 'run')) as lock:
        owner = json.loads((tmp_path / 'run' / LOCK_NAME).read_text())
        assert owner['pid'] == os.getpid() and owner['host'] == this_process()['host']
        assert owner['start_time'] and owner['process_start_ticks'] and owner['command']
        assert lock.taken_over is None
        assert held_by_another_run(str(tmp_path / 'run')) is None  # ours
    assert not (tmp_path / 'run' / LOCK_NAME).exists()


def test_a_live_holder_is_refused_and_named(tmp_path):
    # a lock describing this (live) process, as another run on this host would look
    lock_file = _write_lock(tmp_path, pid=os.getppid(), process_start_ticks=None)
    with pytest.raises(WorkDirLockedError) as error:
        WorkDirLock(str(tmp_path)).acquire()
    message = str(error.value)
    owner = json.loads(lock_file.read_text())
    assert (
        f'The work dir {tmp_path} is in use by another training run: PID {os.getppid()}' in message
    )
    assert f'on host {owner["host"]}, started {owner["start_time"]}' in message
    assert 'touched nothing there' in message and 'choose another --work-dir' in message
    assert json.loads(lock_file.read_text()) == owner  # untouched
    assert held_by_another_run(str(tmp_path)).startswith(f'PID {os.getppid()} on host')


@pytest.mark.parametrize(
    'changes, why',
    [
        (dict(pid='dead'), 'is not running on'),
        (dict(process_start_ticks=1), 'is now another process'),
        (dict(boot_id='another-boot'), 'has rebooted since'),
    ],
)
def test_a_stale_lock_on_this_host_is_taken_over(tmp_path, changes, why):
    if changes.get('pid') == 'dead':
        changes['pid'] = _dead_pid()
    _write_lock(tmp_path, **changes)
    with WorkDirLock(str(tmp_path)) as lock:
        assert lock.taken_over.startswith(f'Took over the lock {tmp_path / LOCK_NAME}')
        assert why in lock.taken_over
        assert json.loads((tmp_path / LOCK_NAME).read_text())['pid'] == os.getpid()
    assert not list(tmp_path.iterdir())  # the stale file moved aside was deleted too


def test_another_hosts_lock(tmp_path, monkeypatch):
    _write_lock(tmp_path, host='node-7', pid=123, slurm_job_id=None)
    with pytest.raises(WorkDirLockedError) as error:
        WorkDirLock(str(tmp_path)).acquire()
    assert 'runs on another host, where this process cannot see its PID' in str(error.value)
    assert f'delete {tmp_path / LOCK_NAME} and start again' in str(error.value)
    # without a heartbeat for longer than stale_after_s: gone
    _write_lock(tmp_path, age_s=700, host='node-7', pid=123)
    with WorkDirLock(str(tmp_path), stale_after_s=600) as lock:
        assert 'its heartbeat stopped 12 min ago' in lock.taken_over


def test_an_earlier_run_of_the_same_slurm_job_is_stale(tmp_path, monkeypatch):
    monkeypatch.setenv('SLURM_JOB_ID', '42')
    monkeypatch.setenv('SLURM_RESTART_COUNT', '1')
    _write_lock(tmp_path, host='node-7', pid=123, slurm_job_id='42', slurm_restart_count=0)
    with WorkDirLock(str(tmp_path)) as lock:
        assert 'an earlier run of this Slurm job (restart 0; this is restart 1)' in lock.taken_over


def test_the_heartbeat_touches_the_lock(tmp_path):
    with WorkDirLock(str(tmp_path), heartbeat_s=0.05):
        path = tmp_path / LOCK_NAME
        os.utime(path, (1, 1))
        time.sleep(0.5)
        assert path.stat().st_mtime > time.time() - 5


def test_unreadable_lock_files(tmp_path):
    (tmp_path / LOCK_NAME).write_text('{"host": "x", ')  # being written right now
    with pytest.raises(WorkDirLockedError, match='created just now'):
        WorkDirLock(str(tmp_path)).acquire()
    os.utime(tmp_path / LOCK_NAME, (1, 1))  # and long ago: garbage
    with WorkDirLock(str(tmp_path)) as lock:
        assert 'its content is not readable' in lock.taken_over


def test_process_rank(monkeypatch):
    monkeypatch.setenv('RANK', '3')
    monkeypatch.setenv('SLURM_PROCID', '5')
    assert process_rank('pytorch') == 3 and process_rank('slurm') == 5
    assert process_rank('none') == 0
