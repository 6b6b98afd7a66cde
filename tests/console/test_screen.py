"""ConsoleRunner: the screen gets one line for each of the environment, config and hook table that
mmengine's Runner logs while it is built, then the model and the run's files; the log file gets
mmengine's records unchanged; --verbose (DEFORMDETR_VERBOSE=1) leaves the screen as mmengine's."""

from pathlib import Path

import pytest
from mmengine.config import Config

from mmdet_deformdetr.console import ConsoleRunner, describe_model
from tests.helpers.models import build_tiny_model, tiny_model_cfg


def _build(tmp_path: Path) -> ConsoleRunner:
    config = tmp_path / 'tiny.py'
    Config(dict(model=tiny_model_cfg('plain'))).dump(str(config))
    cfg = Config.fromfile(str(config))
    return ConsoleRunner(
        model=cfg.model,
        work_dir=str(tmp_path / 'work'),
        default_scope='mmdet',
        experiment_name=f'console_runner_{tmp_path.name}',
        cfg=cfg,
    )


@pytest.mark.parametrize('verbose', [False, True])
def test_screen_short_log_file_whole(verbose, tmp_path, capsys, monkeypatch):
    if verbose:
        monkeypatch.setenv('DEFORMDETR_VERBOSE', '1')
    else:
        monkeypatch.delenv('DEFORMDETR_VERBOSE', raising=False)
    runner = _build(tmp_path)
    screen = capsys.readouterr().out
    logged = Path(runner.log_file).read_text()
    for whole in ('System environment:', 'Config:\n', 'Hooks will be executed in the following'):
        assert whole in logged
        assert (whole in screen) == verbose, whole
    lines = screen.splitlines()
    assert any(line.endswith(describe_model(runner.model)) for line in lines)
    assert any(
        line.endswith(f'Work dir: {runner.work_dir}; log: {runner.log_file}') for line in lines
    )
    if not verbose:
        assert len(lines) <= 6, screen
        environment = next(line for line in lines if ' - Environment: Python ' in line)
        assert 'Distributed training: False, processes: 1' in environment
        config = next(line for line in lines if ' - Config: ' in line)
        assert config.endswith(
            f'Config: {tmp_path / "tiny.py"} (in full: {runner.log_file} and '
            f'{Path(runner.work_dir) / "tiny.py"})'
        )
        hooks = next(line for line in lines if ' - Hooks: ' in line)
        assert 'RuntimeInfoHook' in hooks and 'LoggerHook' in hooks


def test_describe_model_of_a_deformable_detr():
    line = describe_model(build_tiny_model('two_stage'))
    assert line.startswith(
        'Model: DeformDETR (two-stage + box refinement, ResNet-18 backbone, 4 feature levels, '
        '1 + 2 layers, 32-d, 12 queries, 3 classes); '
    )
    assert line.endswith(' M trainable)')
