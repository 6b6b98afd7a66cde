"""One training run per work dir: ``WorkDirLock``.

Two runs in one work dir overwrite each other's checkpoints and config copy, and the start-up
clean-up of one deletes the half-written checkpoint of the other (which then fails on its
rename). ``tools/train.py`` therefore takes ``<work_dir>/train.lock`` before it builds the runner,
that is before anything is written there (config copy, log folder, clean-up), and refuses to start
when a live run holds it, naming that run.

The lock file is created with ``O_CREAT | O_EXCL`` (atomic on local file systems and NFS v3+)
and holds JSON: host, PID, start time, the command line, the process's start time in clock ticks
(PIDs are reused), the boot id and PID namespace (a PID means something only on one host, in one
container), and the Slurm job id and restart count when there are any. A daemon thread touches
the file every ``heartbeat_s`` seconds. A lock is stale, and taken over with a log line, when:

- its host is this host (same boot, same PID namespace) and its PID is not running, or runs
  another program (a different start time);
- this host rebooted since it was taken;
- it belongs to an earlier run of the same Slurm job (``scontrol requeue`` keeps the job id and
  increases ``SLURM_RESTART_COUNT``; Slurm ends every process of a job before requeueing it);
- it was not touched for ``stale_after_s`` seconds (its run is gone, on whichever host).

Otherwise (a live run here, or a recent heartbeat from another host) ``WorkDirLockedError`` says
which run holds it and what to do. Only the rank-0 process of a multi-process run takes the lock
(``process_rank``): the work dir is shared by all ranks and nodes, and a lock per node would make
the nodes of one run refuse each other. The lock is released when training ends (also on an
exception or a preemption); a process killed with SIGKILL leaves it behind, stale.
"""

import datetime
import json
import os
import os.path as osp
import socket
import sys
import threading
from typing import Any, Dict, Optional, Tuple

#: the lock's file name in the work dir
LOCK_NAME = 'train.lock'
DEFAULT_HEARTBEAT_S = 60.0
DEFAULT_STALE_AFTER_S = 600.0


class WorkDirLockedError(RuntimeError):
    """Another live run holds the work dir's lock. ``owner``: what its lock file says."""

    def __init__(self, message: str, owner: Dict[str, Any]) -> None:
        super().__init__(message)
        self.owner = owner


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None


def _process_start_ticks(pid: int) -> Optional[int]:
    """Start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22);
    None when there is no such process (or no /proc)."""
    stat = _read_text(f'/proc/{pid}/stat')
    if stat is None:
        return None
    try:
        return int(stat.rsplit(')', 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_namespace() -> Optional[int]:
    try:
        return os.stat('/proc/self/ns/pid').st_ino
    except OSError:
        return None


def _slurm_restart_count() -> Optional[int]:
    value = os.environ.get('SLURM_RESTART_COUNT')
    return (
        int(value) if value and value.isdigit() else (0 if 'SLURM_JOB_ID' in os.environ else None)
    )


def process_rank(launcher: str) -> int:
    """Global rank of this process from the variables its launcher sets (0 without one)."""
    names = {
        'pytorch': ('RANK',),
        'slurm': ('SLURM_PROCID',),
        'mpi': ('OMPI_COMM_WORLD_RANK', 'PMI_RANK'),
    }.get(launcher, ())
    for name in names:
        if os.environ.get(name, '').isdigit():
            return int(os.environ[name])
    return 0


def this_process() -> Dict[str, Any]:
    """What a lock taken by this process records."""
    now = datetime.datetime.now().astimezone()
    return dict(
        host=socket.gethostname(),
        pid=os.getpid(),
        start_time=now.isoformat(timespec='seconds'),
        command=' '.join(sys.argv),
        process_start_ticks=_process_start_ticks(os.getpid()),
        boot_id=_read_text('/proc/sys/kernel/random/boot_id'),
        pid_namespace=_pid_namespace(),
        slurm_job_id=os.environ.get('SLURM_JOB_ID'),
        slurm_restart_count=_slurm_restart_count(),
    )


def describe(owner: Dict[str, Any]) -> str:
    """'PID 123 on host node1, started 2026-12-07T10:00:00+00:00 (Slurm job 42)'."""
    text = f'PID {owner.get("pid")} on host {owner.get("host")}, started {owner.get("start_time")}'
    if owner.get('slurm_job_id'):
        text += f' (Slurm job {owner["slurm_job_id"]})'
    return text


def lock_status(
    owner: Dict[str, Any], age_s: float, stale_after_s: float = DEFAULT_STALE_AFTER_S
) -> Tuple[Optional[bool], str]:
    """Whether the run described by ``owner`` (a lock file touched ``age_s`` seconds ago) is
    alive: (True, why), (False, why it is stale) or (None, why it cannot be told from here)."""
    me = this_process()
    same_machine = owner.get('host') == me['host'] and owner.get('boot_id') == me['boot_id']
    if owner.get('host') == me['host'] and owner.get('boot_id') != me['boot_id']:
        if owner.get('boot_id') and me['boot_id']:
            return False, f'host {me["host"]} has rebooted since'
    if (
        owner.get('slurm_job_id')
        and owner.get('slurm_job_id') == me['slurm_job_id']
        and (owner.get('slurm_restart_count') or 0) < (me['slurm_restart_count'] or 0)
    ):
        return False, (
            f'it belongs to an earlier run of this Slurm job (restart '
            f'{owner.get("slurm_restart_count") or 0}; this is restart {me["slurm_restart_count"]})'
        )
    if same_machine and owner.get('pid_namespace') == me['pid_namespace']:
        pid = owner.get('pid')
        ticks = _process_start_ticks(pid) if isinstance(pid, int) else None
        if ticks is None:
            return False, f'PID {pid} is not running on {me["host"]}'
        if owner.get('process_start_ticks') not in (None, ticks):
            return False, f'PID {pid} on {me["host"]} is now another process'
        return True, f'PID {pid} is running on {me["host"]}'
    if age_s > stale_after_s:
        return False, f'its heartbeat stopped {age_s / 60:.0f} min ago'
    where = 'another host' if owner.get('host') != me['host'] else 'another container'
    return None, (
        f'it runs on {where}, where this process cannot see its PID; its heartbeat is '
        f'{age_s:.0f} s old (a lock is stale after {stale_after_s:.0f} s without one)'
    )


class WorkDirLock:
    """The lock of one work dir (see the module docstring); a context manager.

    Args:
        work_dir: the run's work dir (created if missing).
        heartbeat_s: seconds between touches of the lock file.
        stale_after_s: a lock not touched for this long is stale.
    """

    def __init__(
        self,
        work_dir: str,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
    ) -> None:
        self.path = osp.join(work_dir, LOCK_NAME)
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.owner: Optional[Dict[str, Any]] = None
        self.taken_over: Optional[str] = None  # what was said about a stale lock taken over
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> 'WorkDirLock':
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or take over a stale one (``taken_over`` then says whose).

        Raises:
            WorkDirLockedError: a live run (or one whose liveness cannot be told) holds it.
        """
        os.makedirs(osp.dirname(self.path), exist_ok=True)
        me = this_process()
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing()
                continue
            with os.fdopen(fd, 'w') as file:
                json.dump(me, file, indent=1)
                file.flush()
                os.fsync(file.fileno())
            self.owner = me
            self._start_heartbeat()
            return
        raise RuntimeError(f'could not take {self.path}: it keeps changing hands')

    def _handle_existing(self) -> None:
        """Raise for a live owner; move a stale lock out of the way."""
        try:
            with open(self.path) as file:
                text = file.read()
            age_s = max(0.0, datetime.datetime.now().timestamp() - os.stat(self.path).st_mtime)
        except FileNotFoundError:
            return  # released meanwhile: try again
        try:
            owner = json.loads(text)
        except ValueError:
            if age_s < 10:  # being written by a process that has just created it
                owner = {'host': '?', 'pid': '?', 'start_time': 'just now'}
                raise WorkDirLockedError(
                    self._held_message(owner, 'it was created just now'), owner
                ) from None
            owner, alive, why = {}, False, 'its content is not readable'
        else:
            alive, why = lock_status(owner, age_s, self.stale_after_s)
        if alive is not False:
            raise WorkDirLockedError(self._held_message(owner, why, alive is None), owner)
        # stale: move it aside under a name of our own, and check we moved what we judged
        aside = f'{self.path}.stale.{os.getpid()}'
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read_text(aside) != text.strip():  # another process re-took it meanwhile: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.remove(aside)
            return
        os.remove(aside)
        self.taken_over = (
            f'Took over the lock {self.path} of a run that is gone ({describe(owner)}): {why}.'
            if owner
            else f'Took over the lock {self.path}: {why}.'
        )

    def _held_message(self, owner: Dict[str, Any], why: str, unsure: bool = False) -> str:
        work_dir = osp.dirname(self.path)
        advice = (
            f'If that run has ended (its host crashed, say), delete {self.path} and start '
            f'again; the lock also becomes stale by itself {self.stale_after_s:.0f} s after its '
            f'last heartbeat.'
            if unsure
            else 'Wait for it to end, stop it, or choose another --work-dir.'
        )
        return (
            f'The work dir {work_dir} is in use by another training run: {describe(owner)} '
            f"({why}). Two runs in one work dir overwrite each other's checkpoints, so this one "
            f'did not start and touched nothing there. {advice}'
        )

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name='work-dir-lock', daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass  # the work dir became unwritable: the next checkpoint save will say so

    def release(self) -> None:
        """Stop the heartbeat and delete the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.owner is None:
            return
        try:
            current = json.loads(_read_text(self.path) or 'null')
        except ValueError:
            current = None
        if isinstance(current, dict) and (current.get('host'), current.get('pid')) == (
            self.owner['host'],
            self.owner['pid'],
        ):
            try:
                os.remove(self.path)
            except OSError:
                pass
        self.owner = None


def held_by_another_run(work_dir: str) -> Optional[str]:
    """A description of the live run holding ``work_dir``'s lock when it is not this process;
    None when there is no lock, it is ours, or it is stale."""
    path = osp.join(work_dir, LOCK_NAME)
    try:
        with open(path) as file:
            owner = json.load(file)
        age_s = max(0.0, datetime.datetime.now().timestamp() - os.stat(path).st_mtime)
    except (OSError, ValueError):
        return None
    me = this_process()
    if (owner.get('host'), owner.get('pid'), owner.get('pid_namespace')) == (
        me['host'],
        me['pid'],
        me['pid_namespace'],
    ):
        return None
    alive, _ = lock_status(owner, age_s)
    return None if alive is False else describe(owner)
