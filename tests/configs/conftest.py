"""Fixtures for the config tests: load a config of ours and shrink its backbone for fast runs."""

from typing import Callable

import pytest
from mmengine.config import Config

from tests.helpers.models import CONFIG_DIR


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
            type='ResNet',
            depth=18,
            num_stages=4,
            out_indices=out_indices,
            frozen_stages=1,
            norm_cfg=dict(type='BN', requires_grad=False),
            norm_eval=True,
            style='pytorch',
            init_cfg=None,
        )
        # ResNet-18 stage i has 64 * 2**i output channels (BasicBlock, no expansion)
        cfg.model.neck.in_channels = [64 * 2**index for index in out_indices]
        return cfg

    return shrink
