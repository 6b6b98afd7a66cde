"""Fixtures for the engine tests: mmdet's modules registered with 'mmdet' as default scope (as
tools/train.py has them), one torch thread (shared 2-core machine), and a single-process gloo
group for the DDP wrapper tests."""
from pathlib import Path
from typing import Iterator

import pytest
import torch


@pytest.fixture(scope='module', autouse=True)
def mmdet_scope() -> None:
    pytest.importorskip('mmcv.ops')  # mmdet's models need mmcv built with its ops
    from mmdet.utils import register_all_modules
    from mmengine.registry import init_default_scope

    import mmdet_deformdetr  # noqa: F401  (registers our modules and engine fixes)

    register_all_modules(init_default_scope=False)
    init_default_scope('mmdet')


@pytest.fixture(scope='module', autouse=True)
def single_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def gloo_group(tmp_path: Path) -> Iterator[None]:
    """A world of one process on gloo (a file store, no port), destroyed after the test."""
    import torch.distributed as dist
    assert not dist.is_initialized()
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
