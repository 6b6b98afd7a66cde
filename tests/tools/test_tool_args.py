"""Command lines of tools/train.py and tools/test.py -> config, without running anything:
mmdet's precedence rules (work_dir, resume), --amp / --auto-scale-lr / --tta / --show-dir."""

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers.tools import REPO_ROOT, TINY_CONFIG

TTA_CONFIG = (
    REPO_ROOT
    / 'configs'
    / 'deformable_detr'
    / 'deformable-detr-refine-twostage_x101-64x4d-dconv-c3-c5_16xb2-50e-tta_coco.py'
)


def _load_tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f'deformdetr_tools_{name}', REPO_ROOT / 'tools' / f'{name}.py'
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def train_tool() -> ModuleType:
    return _load_tool('train')


@pytest.fixture(scope='module')
def test_tool() -> ModuleType:
    return _load_tool('test')


def _cfg(tool: ModuleType, monkeypatch, *argv: str):
    monkeypatch.setattr(sys, 'argv', [f'{tool.__name__}.py', *argv])
    monkeypatch.setenv('LOCAL_RANK', '0')  # parse_args sets it when missing, as mmdet's tools
    return tool.build_cfg(tool.parse_args())


def test_train_defaults(train_tool, monkeypatch):
    cfg = _cfg(train_tool, monkeypatch, str(TINY_CONFIG))
    assert cfg.launcher == 'none'
    assert Path(cfg.work_dir) == Path('work_dirs/tiny_deformdetr_coco')
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert not cfg.get('resume', False)


def test_train_options(train_tool, monkeypatch, tmp_path):
    cfg = _cfg(
        train_tool,
        monkeypatch,
        str(TINY_CONFIG),
        '--work-dir',
        str(tmp_path),
        '--amp',
        '--auto-scale-lr',
        '--launcher',
        'pytorch',
        '--cfg-options',
        'model.num_queries=7',
    )
    assert cfg.work_dir == str(tmp_path)
    assert cfg.launcher == 'pytorch'
    assert cfg.model.num_queries == 7
    assert cfg.auto_scale_lr == dict(base_batch_size=32, enable=True)
    assert cfg.optim_wrapper.type in ('CPUAutocastOptimWrapper', 'AmpOptimWrapper')


@pytest.mark.parametrize(
    'argv, load_from', [(['--resume'], None), (['--resume', 'ckpt.pth'], 'ckpt.pth')]
)
def test_train_resume(train_tool, monkeypatch, argv, load_from):
    cfg = _cfg(train_tool, monkeypatch, str(TINY_CONFIG), *argv)
    assert cfg.resume is True
    assert cfg.load_from == load_from  # None: the latest checkpoint of the work dir


def test_test_options(test_tool, monkeypatch, tmp_path):
    cfg = _cfg(
        test_tool,
        monkeypatch,
        str(TINY_CONFIG),
        'ckpt.pth',
        '--show-dir',
        'vis',
        '--work-dir',
        str(tmp_path),
    )
    assert cfg.load_from == 'ckpt.pth'
    assert cfg.default_hooks.visualization.draw is True
    assert cfg.default_hooks.visualization.test_out_dir == 'vis'


def test_test_tta_wraps_the_model(test_tool, monkeypatch):
    cfg = _cfg(test_tool, monkeypatch, str(TTA_CONFIG), 'ckpt.pth', '--tta')
    assert cfg.model.type == 'DetTTAModel'
    assert cfg.model.module.type == 'DeformDETR'
    assert cfg.test_dataloader.dataset.pipeline[1].type == 'TestTimeAug'


def test_test_tta_without_tta_settings_fails_clearly(test_tool, monkeypatch):
    with pytest.raises(ValueError, match='tta_model and tta_pipeline'):
        _cfg(test_tool, monkeypatch, str(TINY_CONFIG), 'ckpt.pth', '--tta')


def test_test_out_must_be_pickle(test_tool, monkeypatch):
    with pytest.raises(SystemExit):
        _cfg(test_tool, monkeypatch, str(TINY_CONFIG), 'ckpt.pth', '--out', 'results.json')


@pytest.mark.parametrize('tool_name, argv', [('train', []), ('test', ['ckpt.pth'])])
@pytest.mark.parametrize('flag', ['--local-rank', '--local_rank'])
def test_local_rank_flag_sets_local_rank_unless_the_launcher_did(
    request, monkeypatch, tool_name, argv, flag
):
    """The arguments both tools share (tools/tool_common.py), as mmdet's tools handle them."""
    tool = request.getfixturevalue(f'{tool_name}_tool')
    monkeypatch.setattr(sys, 'argv', [f'{tool_name}.py', str(TINY_CONFIG), *argv, flag, '3'])
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    assert tool.parse_args().local_rank == 3
    assert os.environ['LOCAL_RANK'] == '3'
    monkeypatch.setenv('LOCAL_RANK', '1')  # set by torchrun: kept
    tool.parse_args()
    assert os.environ['LOCAL_RANK'] == '1'
