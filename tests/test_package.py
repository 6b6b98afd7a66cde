"""The installed package: version, registration, and the environment it promises."""

import importlib
import subprocess
import sys

import pytest

import mmdet_deformdetr

# Every module of ours, under the registry it must be found in (docs/architecture.md).
OUR_MODELS = [
    'MSDeformAttn',
    'DeformableDetrTransformer',
    'DeformDETRHead',
    'DeformDETR',
    'BiFPNNeck',
]


def test_version_is_a_string():
    assert isinstance(mmdet_deformdetr.__version__, str)
    assert mmdet_deformdetr.__version__.count('.') == 2


@pytest.mark.parametrize('name', OUR_MODELS)
def test_registered_in_mmdet_models(name):
    from mmdet.registry import MODELS

    cls = MODELS.get(name)
    assert cls is not None, f'{name} is not registered'
    assert cls.__module__.startswith('mmdet_deformdetr.'), cls.__module__


def test_mmdet_names_are_untouched():
    # We never register with force=True: mmdet's own classes keep their names.
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    assert MODELS.get('DeformableDETR').__module__.startswith('mmdet.')
    assert MODELS.get('DeformableDETRHead').__module__.startswith('mmdet.')


@pytest.mark.parametrize('module', ['mmcv.ops', 'mmdet', 'mmengine', 'pycocotools.coco'])
def test_runtime_dependencies_import(module):
    importlib.import_module(module)


def test_mmcv_built_with_ops():
    # mmcv must be the full build (MMCV_WITH_OPS=1): its compiled extension provides the C++ ops.
    from mmcv.utils import ext_loader

    ext = ext_loader.load_ext('_ext', ['nms'])
    assert hasattr(ext, 'nms')


@pytest.mark.slow
def test_module_prints_versions():
    import mmcv
    import mmdet
    import torch

    out = subprocess.run(
        [sys.executable, '-m', 'mmdet_deformdetr'], check=True, capture_output=True, text=True
    ).stdout
    for version in (
        torch.__version__,
        mmcv.__version__,
        mmdet.__version__,
        mmdet_deformdetr.__version__,
    ):
        assert version in out
