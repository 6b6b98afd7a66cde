"""mmdet_deformdetr/console/errors.py: a checkpoint that a setting asked for and that cannot be
read (a download that fails, a missing file) is one message naming the URL, the setting and the
--cfg-options that runs without it; config errors are named; other errors are left alone.

Downloads go to http://127.0.0.1:9/ (the discard port: the connection is refused at once, no
network needed) with torch.hub's cache in the test's folder."""

from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.runner import CheckpointLoader, load_checkpoint

from mmdet_deformdetr.console import ConfigError, config_errors, explain, explained_errors
from mmdet_deformdetr.console.errors import checkpoint_request
from tests.helpers.models import build_tiny_model, tiny_model_cfg

UNREACHABLE = 'http://127.0.0.1:9/weights/r18.pth'


@pytest.fixture(autouse=True)
def hub_cache(tmp_path: Path, monkeypatch) -> Path:
    """torch.hub's cache in the test's folder: nothing cached can answer instead of the URL."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    return tmp_path / 'torch_home' / 'hub' / 'checkpoints'


def _raised(function, *args, **kwargs) -> BaseException:
    with pytest.raises(Exception) as info:
        function(*args, **kwargs)
    return info.value


def test_load_from_that_cannot_be_downloaded(hub_cache: Path):
    cfg = Config(dict(load_from=UNREACHABLE, model=dict(type='DeformDETR')))
    error = _raised(CheckpointLoader.load_checkpoint, UNREACHABLE, map_location='cpu')
    assert checkpoint_request(error) == (UNREACHABLE, UNREACHABLE, str(hub_cache / 'r18.pth'))
    message = explain(error, cfg)
    lines = message.split('\n')
    assert lines[0].startswith(f'load_from = {UNREACHABLE}: could not download {UNREACHABLE} (')
    assert 'Connection refused' in lines[0]
    assert lines[1] == (
        'To run without it: --cfg-options load_from=None (the model then starts from its '
        'initialisation).'
    )
    assert f'put it at {hub_cache / "r18.pth"}' in lines[2]


def test_backbone_init_cfg_that_cannot_be_downloaded():
    """The backbone's pretrained weights, as mmengine's init_weights loads them."""
    from mmdet.registry import MODELS

    model_cfg = tiny_model_cfg('plain')
    model_cfg['backbone']['init_cfg'] = dict(type='Pretrained', checkpoint=UNREACHABLE)
    cfg = Config(dict(model=model_cfg))
    error = _raised(MODELS.build(model_cfg).init_weights)
    message = explain(error, cfg)
    assert message.startswith(
        f'model.backbone.init_cfg.checkpoint = {UNREACHABLE}: could not download'
    )
    assert (
        '--cfg-options model.backbone.init_cfg=None (the backbone then starts from random, not '
        'pretrained, weights)'
    ) in message


def test_open_mmlab_name_names_the_url_it_stands_for(monkeypatch):
    import mmengine.runner.checkpoint as mmengine_checkpoint

    monkeypatch.setattr(mmengine_checkpoint, 'get_external_models', lambda: {'r18': UNREACHABLE})
    cfg = Config(dict(model=dict(backbone=dict(init_cfg=dict(checkpoint='open-mmlab://r18')))))
    error = _raised(CheckpointLoader.load_checkpoint, 'open-mmlab://r18')
    message = explain(error, cfg)
    assert message.startswith(
        f'model.backbone.init_cfg.checkpoint = open-mmlab://r18: could not download {UNREACHABLE}'
    )


def test_missing_deformdetr_file(tmp_path: Path):
    name = f'deformdetr://{tmp_path}/missing/model.safetensors'
    cfg = Config(dict(load_from=name))
    error = _raised(load_checkpoint, build_tiny_model('plain'), name, map_location='cpu')
    message = explain(error, cfg)
    assert message.startswith(f'load_from = {name}: checkpoint file not found: {tmp_path}')
    assert '--cfg-options load_from=None' in message
    assert 'download' not in message


def test_checkpoint_argument_is_not_a_setting_to_turn_off():
    cfg = Config(dict(load_from=UNREACHABLE))  # tools/test.py puts CHECKPOINT there
    error = _raised(CheckpointLoader.load_checkpoint, UNREACHABLE)
    message = explain(error, cfg, checkpoint_argument=UNREACHABLE)
    assert message.startswith(f'the CHECKPOINT argument = {UNREACHABLE}: could not download')
    assert '--cfg-options' not in message


def test_config_errors_are_named_and_other_errors_are_not_explained():
    with pytest.raises(ConfigError, match=r'^my_config.py: KeyError: no such key$'):
        with config_errors('my_config.py'):
            raise KeyError('no such key')
    with pytest.raises(RuntimeError):  # not a config problem: passes unchanged
        with config_errors('my_config.py'):
            raise RuntimeError('a bug')
    assert explain(RuntimeError('a bug')) is None
    assert explain(ValueError('plain value error')) is None
    registry = KeyError('CocoDatasett is not in the mmdet::dataset registry. Please check ...')
    assert explain(registry).startswith('the config names an unknown type: CocoDatasett is not')


def test_explained_error_exits_with_the_message_and_logs_the_traceback(tmp_path, monkeypatch):
    from mmengine.logging import MMLogger

    from mmdet_deformdetr.checkpoint import CorruptCheckpointError

    monkeypatch.delenv('DEFORMDETR_VERBOSE', raising=False)
    log_file = tmp_path / 'run.log'
    MMLogger.get_instance('errors_test_run', log_file=str(log_file))  # the current logger
    with pytest.raises(SystemExit) as exit_info:
        with explained_errors('tools/x.py'):
            raise CorruptCheckpointError('x.pth is truncated (10 bytes)')
    assert str(exit_info.value.code) == (
        'tools/x.py: error: x.pth is truncated (10 bytes)\n'
        f'(the traceback: in {log_file}; --verbose prints it here)'
    )
    for handler in MMLogger.get_current_instance().handlers:
        handler.flush()
    assert 'Traceback (most recent call last)' in log_file.read_text()
    assert 'CorruptCheckpointError: x.pth is truncated' in log_file.read_text()

    with pytest.raises(RuntimeError):  # not explained: raised as it is
        with explained_errors('tools/x.py'):
            raise RuntimeError('a bug')
    monkeypatch.setenv('DEFORMDETR_VERBOSE', '1')
    with pytest.raises(CorruptCheckpointError):  # verbose: the traceback, as Python prints it
        with explained_errors('tools/x.py'):
            raise CorruptCheckpointError('x.pth is truncated (10 bytes)')
