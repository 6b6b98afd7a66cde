"""Fixtures of the checkpoint tests: a real training checkpoint of the tiny model, a checkpoint
that runs a shell command when unpickled, and the converter tool as a module."""

import importlib.util
from pathlib import Path
from typing import Callable, Tuple

import numpy as np
import pytest
import torch

from tests.checkpoint.ckpt_files import CONVERTER, ShellPayload
from tests.helpers.models import build_tiny_model


@pytest.fixture(scope='session')
def training_checkpoint(tmp_path_factory) -> Path:
    """The tiny refine model's checkpoint laid out as mmengine's CheckpointHook writes one:
    weights, AdamW state, a message hub (HistoryBuffer, numpy scalars) and meta."""
    from mmengine.logging import MessageHub
    from mmengine.runner import save_checkpoint

    model = build_tiny_model('refine')
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for param in model.parameters():
        param.grad = torch.full_like(param, 1e-3)
    optimizer.step()
    hub = MessageHub.get_instance('checkpoint_tests')
    hub.update_scalar('train/loss', np.float64(1.25))
    hub.update_info('iter', 2)
    path = tmp_path_factory.mktemp('training') / 'iter_2.pth'
    save_checkpoint(
        dict(
            meta=dict(
                epoch=0, iter=2, seed=np.int64(0), dataset_meta=dict(classes=('a', 'b', 'c'))
            ),
            state_dict=model.state_dict(),
            optimizer=optimizer.state_dict(),
            message_hub=hub.state_dict(),
        ),
        str(path),
    )
    return path


@pytest.fixture
def evil_checkpoint(tmp_path: Path) -> Tuple[Path, Path]:
    """``(file, marker)``: the tiny model's weights, and a meta entry whose unpickling would run
    ``touch marker``."""
    marker = tmp_path / 'payload_ran'
    path = tmp_path / 'evil.pth'
    torch.save(
        {
            'meta': {'epoch': 0, 'iter': 2, 'note': ShellPayload(marker)},
            'state_dict': build_tiny_model('refine').state_dict(),
        },
        path,
    )
    return path, marker


@pytest.fixture(scope='session')
def converter():
    """tools/model_converters/deformable_detr_to_mmdet_deformdetr.py as a module (``.main``)."""
    spec = importlib.util.spec_from_file_location('deformdetr_converter_tool', CONVERTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def make_tiny_file(tmp_path: Path) -> Callable[..., Path]:
    """``make(variant='plain', name='tiny.pth', **cfg)``: a tiny model's ``{'meta',
    'state_dict'}`` file (build_tiny_model's keyword arguments pass through)."""

    def make(variant: str = 'plain', name: str = 'tiny.pth', **kwargs) -> Path:
        path = tmp_path / name
        torch.save(
            {'meta': {'epoch': 1}, 'state_dict': build_tiny_model(variant, **kwargs).state_dict()},
            path,
        )
        return path

    return make
