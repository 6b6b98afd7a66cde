"""Fixtures every test folder shares: mmdet's registry scope, one torch thread, and the data kept
in ``tests/data`` (nothing outside the repository is read)."""

import json
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
import torch

# the fast / whole-suite tiers: --fast, --tier-report, the budget (tests/helpers/tiers.py)
from tests.helpers.tiers import (  # noqa: F401  (pytest hooks, registered by name)
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_call,
    pytest_runtest_protocol,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / 'tests' / 'data'


@pytest.fixture(scope='session', autouse=True)
def mmdet_scope() -> None:
    """Our modules and mmdet's registered, 'mmdet' the default scope: what tools/train.py has."""
    from mmdet.utils import register_all_modules
    from mmengine.registry import init_default_scope

    import mmdet_deformdetr  # noqa: F401  (registers our modules, allow-lists checkpoint types)

    register_all_modules(init_default_scope=False)
    init_default_scope('mmdet')


@pytest.fixture(scope='session', autouse=True)
def mmdet_base_index_read_once() -> Iterator[None]:
    """mmengine reads mmdet's ~200 metafiles for every `mmdet::_base_` a config inherits; the tests
    parse configs hundreds of times, so each lookup is done once per session (the answers are
    mmengine's own: tests/test_packaging.py)."""
    from mmdet_deformdetr.shipped_configs import external_config_index_read_once

    with external_config_index_read_once():
        yield


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread per test, restored afterwards. On a small CPU shared with other jobs,
    torch's default of one thread per core can make a tiny model's loss many times slower (OpenMP
    workers waiting for cores held by other processes). Results do not depend on the thread
    count; a test that measures threading sets its own count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope='session')
def coco_photos() -> Path:
    """Root of the six COCO val photographs kept in the repository: ``images/*.jpg`` and
    ``annotations/instances.json`` (licences in ``LICENSE.md``)."""
    return DATA_DIR / 'coco_photos'


@pytest.fixture(scope='session')
def official_listing() -> Dict[str, Dict[str, List[int]]]:
    """Key -> shape of the official state dict, per build: plain, refine, two_stage,
    single_scale."""
    return json.loads((DATA_DIR / 'official_deformable_detr_state_dict.json').read_text())
