"""Helpers for the config tests: load a config of ours and shrink its backbone for fast runs."""
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
from mmengine.config import Config

CONFIG_DIR = Path(__file__).resolve().parents[2] / 'configs' / 'deformable_detr'


@pytest.fixture(scope='session', autouse=True)
def mmdet_scope() -> None:
    """mmdet's modules registered and 'mmdet' as default scope, as tools/train.py does."""
    pytest.importorskip('mmcv.ops')  # mmdet's models need mmcv built with its ops
    from mmdet.utils import register_all_modules
    from mmengine.registry import init_default_scope

    register_all_modules(init_default_scope=False)
    init_default_scope('mmdet')


@pytest.fixture(scope='module', autouse=True)
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread while these tests run, restored afterwards. On the shared 2-core
    machine, torch's default of one thread per core made a tiny model's loss take 2-60 s instead
    of 0.4 s (OpenMP workers waiting for cores held by other processes); results do not depend on
    the thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope='session')
def load_config() -> Callable[[str], Config]:
    """Config.fromfile of a path relative to configs/deformable_detr/ (imports mmdet_deformdetr)."""

    def load(relative_path: str) -> Config:
        return Config.fromfile(str(CONFIG_DIR / relative_path))

    return load


@pytest.fixture(scope='session')
def shrink_backbone() -> Callable[[Config], Config]:
    """Swap the backbone for a ResNet-18 without pretrained weights, keeping its out_indices, and
    adapt the neck's in_channels; everything the configs are about (neck type, levels, K,
    multi-scale attention, refine, two-stage) stays as configured."""

    def shrink(cfg: Config) -> Config:
        out_indices = tuple(cfg.model.backbone.out_indices)
        cfg.model.backbone = dict(
            type='ResNet', depth=18, num_stages=4, out_indices=out_indices, frozen_stages=1,
            norm_cfg=dict(type='BN', requires_grad=False), norm_eval=True, style='pytorch',
            init_cfg=None)
        # ResNet-18 stage i has 64 * 2**i output channels (BasicBlock, no expansion)
        cfg.model.neck.in_channels = [64 * 2**index for index in out_indices]
        return cfg

    return shrink
