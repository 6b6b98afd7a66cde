"""A real training process SIGKILLed at each moment of a checkpoint save (the test-only hook of
tests/helpers/fault_hooks.py kills it), then ``tools/train.py --resume``.

The kill hits the save of iteration 4, with iter_2.pth saved before and ``max_keep_ckpts=1``,
so a save that deletes first has nothing else to fall back on. With AtomicCheckpointHook (every
config's checkpoint hook) ``--resume`` must work from the newest complete checkpoint and end
bitwise equal to an uninterrupted run; mmengine's own CheckpointHook is run at one moment to show
the failure the hook exists for.
"""

import signal

import pytest

from tests.helpers.faults import (
    MAX_ITERS,
    TrainingProcess,
    load,
    run_train,
    training_state_differences,
)

pytestmark = pytest.mark.slow

KILL_AT = 4
# moment -> the checkpoint --resume must continue from: before the rename into place the new
# checkpoint does not exist; the outdated one is deleted only after last_checkpoint names the new
RESUMED_FROM = {'before_write': 2, 'mid_write': 2, 'after_write': 2, 'remove': 4}


def _killed_run(work_dir, moment: str, *options: str) -> str:
    with TrainingProcess.train(
        work_dir, f'custom_hooks.0.at_iter={KILL_AT}', f'custom_hooks.0.moment={moment}', *options
    ) as run:
        returncode = run.wait()
        output = run.output
    assert returncode == -signal.SIGKILL, output[-3000:]
    assert f'fault_hooks: SIGKILL at {moment} of the save of iteration {KILL_AT}' in output
    return output


@pytest.mark.parametrize('moment', list(RESUMED_FROM))
def test_atomic_checkpoint_survives_a_kill_mid_save(tmp_path, fault_reference, moment):
    work_dir = tmp_path / 'run'
    _killed_run(work_dir, moment)
    expected = RESUMED_FROM[moment]

    # what is on disk: only complete checkpoints under their names, last_checkpoint names one
    # (killed before deleting the outdated iter_2.pth: it is still there)
    assert sorted(path.name for path in work_dir.glob('iter_*.pth')) == (
        ['iter_2.pth', 'iter_4.pth'] if moment == 'remove' else [f'iter_{expected}.pth']
    )
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / f'iter_{expected}.pth')
    assert load(work_dir / f'iter_{expected}.pth')['meta']['iter'] == expected
    partial = sorted(path.name for path in work_dir.glob('.*.writing'))
    assert partial == (
        [f'.iter_{KILL_AT}.pth.writing'] if moment in ('mid_write', 'after_write') else []
    )

    resumed = run_train(work_dir, resume='auto')
    assert f'resumed epoch: 0, iter: {expected}' in resumed
    if partial:
        assert (
            f'Removed 1 incomplete file(s) that an interrupted checkpoint save left in '
            f'{work_dir}: {partial[0]}'
        ) in resumed
    if moment == 'remove':
        assert (
            f'Deleted the outdated checkpoint(s) that an interrupted save had not deleted '
            f'yet: {work_dir}/iter_2.pth'
        ) in resumed
    assert not list(work_dir.glob('.*.writing'))
    assert (
        training_state_differences(
            work_dir / f'iter_{MAX_ITERS}.pth', fault_reference / f'iter_{MAX_ITERS}.pth'
        )
        == []
    )
    # max_keep_ckpts=1 is still honoured after the resumed run
    assert sorted(path.name for path in work_dir.glob('iter_*.pth')) == [f'iter_{MAX_ITERS}.pth']


def test_mmengine_checkpoint_hook_loses_every_checkpoint(tmp_path):
    """The failure being fixed: mmengine's CheckpointHook deleted iter_2.pth before writing
    iter_4.pth, and last_checkpoint still names the deleted file."""
    work_dir = tmp_path / 'run'
    _killed_run(work_dir, 'before_write', 'default_hooks.checkpoint.type=CheckpointHook')
    assert not list(work_dir.glob('*.pth'))
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'iter_2.pth')

    failed = run_train(work_dir, expect_rc=1, resume='auto')
    assert (
        'tools/train.py: error: --resume found nothing to resume from: '
        f'{work_dir}/last_checkpoint names {work_dir}/iter_2.pth, which does not exist; '
        'there is no *.pth file there'
    ) in failed
