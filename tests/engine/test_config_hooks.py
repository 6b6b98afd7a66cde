"""Every shipped config (configs/, projects/) trains with the fault-tolerant hooks: atomic
checkpoints, the stop at the first non-finite value, and the checkpoint-then-exit on a
scheduler's signal."""

from pathlib import Path

import pytest
from mmengine.config import Config

from tests.helpers.tiers import in_fast_tier_configs, slow_except

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(
    [*(REPO_ROOT / 'configs').glob('**/*.py'), *(REPO_ROOT / 'projects').glob('*/configs/**/*.py')]
)


def test_configs_are_found():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize(
    'config',
    slow_except(CONFIGS, in_fast_tier_configs),
    ids=lambda path: str(path.relative_to(REPO_ROOT)),
)
def test_config_selects_the_fault_tolerant_hooks(config):
    hooks = Config.fromfile(str(config)).default_hooks
    assert hooks.checkpoint.type == 'AtomicCheckpointHook'
    assert hooks.check_finite.type == 'StopOnNonFiniteHook'
    assert hooks.preemption.type == 'PreemptionHook'
