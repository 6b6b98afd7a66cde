import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('DEFORMDETR_SHARED', REPO_ROOT.parent / 'shared'))


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope='session')
def tiny_coco() -> Path:
    """Root of the 50 + 50 image COCO 2017 slice in ../shared/data/tiny_coco (read-only)."""
    root = SHARED / 'data' / 'tiny_coco'
    if not (root / 'annotations' / 'instances_val2017.json').is_file():
        pytest.skip(f'tiny_coco not found at {root}')
    return root


@pytest.fixture(scope='session')
def reference_dir() -> Path:
    root = SHARED / 'reference'
    if not root.is_dir():
        pytest.skip(f'reference facts not found at {root}')
    return root
