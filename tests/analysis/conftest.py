"""Our get_flops.py on the tiny config over two photographs, run once for the tests that read it."""

import json
import sys
from typing import Tuple

import pytest

from tests.helpers.tools import COCO_PHOTOS, TINY_CONFIG, run_tool


@pytest.fixture(scope='session')
def our_get_flops(tmp_path_factory) -> Tuple[str, dict]:
    """(printed output, the ``--out`` JSON report) of tools/analysis_tools/get_flops.py."""
    out = tmp_path_factory.mktemp('get_flops') / 'flops.json'
    result = run_tool(
        [
            sys.executable,
            'tools/analysis_tools/get_flops.py',
            str(TINY_CONFIG),
            '--num-images',
            '2',
            '--data-root',
            f'{COCO_PHOTOS}/',
            '--out',
            str(out),
        ]
    )
    return result.output, json.loads(out.read_text())
