"""Fixtures for the tools tests (helpers live in tool_helpers.py)."""
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
from tool_helpers import TINY_CONFIG, run_tool


@pytest.fixture(scope='session')
def tiny_data_options(tiny_coco: Path) -> List[str]:
    """--cfg-options pointing the tiny config's dataloaders and evaluators at tiny_coco."""
    root = f'{tiny_coco}/'
    ann_val = f'{tiny_coco}/annotations/instances_val2017.json'
    return [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')
            ] + [f'val_evaluator.ann_file={ann_val}', f'test_evaluator.ann_file={ann_val}']


@pytest.fixture(scope='session')
def python_tool() -> Callable[..., subprocess.CompletedProcess]:
    """run_tool for a Python script with the interpreter running the tests (the venv's)."""

    def run(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return run_tool([sys.executable, script, *args], timeout=timeout)

    return run


@pytest.fixture(scope='module', autouse=True)
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread for in-process models (shared 2-core machine), restored afterwards."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope='session')
def make_tiny_checkpoint(tmp_path_factory) -> Callable[[str], Path]:
    """``make(variant)``: a checkpoint of the tiny model (80 COCO classes, random weights, COCO's
    class names in its meta), saved as mmengine saves one; cached per variant. Enough for the test
    tools, the inferencers and fine-tuning, with no training."""
    pytest.importorskip('mmcv.ops')
    import torch
    from mmdet.datasets import CocoDataset
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.runner import save_checkpoint

    import mmdet_deformdetr  # noqa: F401

    register_all_modules(init_default_scope=False)
    cache = {}

    def make(variant: str = 'plain') -> Path:
        if variant not in cache:
            cfg = Config.fromfile(str(TINY_CONFIG))
            cfg.model.update(with_box_refine=variant != 'plain',
                             as_two_stage=variant == 'two_stage')
            with DefaultScope.overwrite_default_scope('mmdet'):
                torch.manual_seed(0)
                model = MODELS.build(cfg.model)
            path = tmp_path_factory.mktemp(f'tiny_{variant}') / f'tiny_{variant}.pth'
            save_checkpoint(dict(state_dict=model.state_dict(),
                                 meta=dict(dataset_meta=dict(CocoDataset.METAINFO))), str(path))
            cache[variant] = path
        return cache[variant]

    return make


@pytest.fixture(scope='session')
def tiny_checkpoint(make_tiny_checkpoint) -> Path:
    """The plain tiny model's checkpoint (see make_tiny_checkpoint)."""
    return make_tiny_checkpoint('plain')
