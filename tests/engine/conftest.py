"""Fixtures for the engine tests: a single-process gloo group for the DDP wrapper tests."""

from pathlib import Path
from typing import Iterator

import pytest


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
