"""Fixtures for the tools tests (helpers live in tests/helpers/tools.py)."""

import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from tests.helpers.tools import TINY_CONFIG, coco_photo_options, run_tool


@pytest.fixture(scope='session')
def tiny_data_options(coco_photos: Path) -> List[str]:
    """--cfg-options pointing the tiny config's dataloaders and evaluators at the photographs in
    tests/data/coco_photos."""
    return coco_photo_options(coco_photos)


@pytest.fixture(scope='session')
def python_tool() -> Callable[..., subprocess.CompletedProcess]:
    """run_tool for a Python script with the interpreter running the tests (the venv's)."""

    def run(
        script: str, *args: str, timeout: float = 240, env: Dict[str, str] = None
    ) -> subprocess.CompletedProcess:
        return run_tool([sys.executable, script, *args], timeout=timeout, env=env)

    return run


@pytest.fixture(scope='session')
def make_tiny_checkpoint(tmp_path_factory) -> Callable[[str], Path]:
    """``make(variant)``: a checkpoint of the tiny model (80 COCO classes, random weights, COCO's
    class names in its meta), saved as mmengine saves one; cached per variant. Enough for the test
    tools, the inferencers and fine-tuning, with no training."""
    import torch
    from mmdet.datasets import CocoDataset
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.runner import save_checkpoint

    from tests.helpers.models import VARIANTS

    cache = {}

    def make(variant: str = 'plain') -> Path:
        if variant not in cache:
            cfg = Config.fromfile(str(TINY_CONFIG))
            cfg.model.update(VARIANTS[variant])
            torch.manual_seed(0)
            model = MODELS.build(cfg.model)
            path = tmp_path_factory.mktemp(f'tiny_{variant}') / f'tiny_{variant}.pth'
            save_checkpoint(
                dict(
                    state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(CocoDataset.METAINFO)),
                ),
                str(path),
            )
            cache[variant] = path
        return cache[variant]

    return make


@pytest.fixture(scope='session')
def tiny_checkpoint(make_tiny_checkpoint) -> Path:
    """The plain tiny model's checkpoint (see make_tiny_checkpoint)."""
    return make_tiny_checkpoint('plain')


@pytest.fixture(scope='session')
def fault_reference(tmp_path_factory) -> Path:
    """Work dir of an uninterrupted run of tests/helpers/tiny_faults_coco.py (8 iterations),
    which the fault tests' killed and resumed runs must end equal to."""
    from tests.helpers.faults import reference_run

    return reference_run(tmp_path_factory.mktemp('fault_reference'))
