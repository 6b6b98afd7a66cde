"""Fixtures for the checkpoint tests: mmdet's scope and the official state-dict listing. Plain
helpers (models, official files) are in ckpt_helpers.py."""
import json
from pathlib import Path
from typing import Dict

import pytest

pytest.importorskip('mmcv.ops')  # mmdet's models need mmcv built with its ops
import mmdet_deformdetr  # noqa: E402,F401  (registers our modules, allow-lists checkpoint types)


@pytest.fixture(scope='session', autouse=True)
def mmdet_scope() -> None:
    """mmdet's modules registered and 'mmdet' as default scope, as tools/train.py does."""
    from mmdet.utils import register_all_modules
    from mmengine.registry import init_default_scope

    register_all_modules(init_default_scope=False)
    init_default_scope('mmdet')


@pytest.fixture(scope='session')
def official_listing(reference_dir: Path) -> Dict[str, Dict[str, list]]:
    return json.loads((reference_dir / 'official_deformable_detr_state_dict.json').read_text())
