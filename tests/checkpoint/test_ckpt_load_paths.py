"""Every in-process load path reads through the safe loader: a pickle that would run a shell
command is refused with OUR message even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (the payload never
runs), and a damaged file is ONE error naming the file and its size. (The tools as subprocesses:
test_ckpt_tools_safety.py.)"""

import os
from pathlib import Path
from typing import Callable, Dict

import pytest
from mmengine.runner import CheckpointLoader, Runner, load_checkpoint
from mmengine.runner import checkpoint as mmengine_checkpoint

from mmdet_deformdetr.checkpoint import (
    CorruptCheckpointError,
    UntrustedCheckpointError,
    check_checkpoint_for_testing,
    load_from_deformdetr_uri,
    load_from_local_safely,
    safe_load,
)
from tests.checkpoint.ckpt_files import DAMAGES, SHELL_GLOBAL, damage_file
from tests.helpers.models import build_tiny_model, tiny_model_cfg
from tests.helpers.tiers import slow_except

FORCE_NO_WEIGHTS_ONLY = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'


def _runner(work_dir: Path, **kwargs) -> Runner:
    return Runner(
        model=tiny_model_cfg('refine'), work_dir=str(work_dir), default_scope='mmdet', **kwargs
    )


def assert_no_chained_traceback(error: BaseException) -> None:
    """Python prints only our error: no "direct cause" / "during handling" traceback of torch's."""
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


#: name -> load(path, tmp_path, converter); one per way a user gives us a checkpoint
PATHS: Dict[str, Callable] = {
    'safe_load': lambda path, tmp, tool: safe_load(path),
    'load_checkpoint': lambda path, tmp, tool: load_checkpoint(
        build_tiny_model('refine'), str(path), map_location='cpu'
    ),
    'load_from': lambda path, tmp, tool: _runner(tmp / 'run', load_from=str(path)).load_or_resume(),
    'resume': lambda path, tmp, tool: _runner(
        tmp / 'run', load_from=str(path), resume=True
    ).load_or_resume(),
    'deformdetr_uri': lambda path, tmp, tool: load_checkpoint(
        build_tiny_model('refine'), f'deformdetr://{path}', map_location='cpu'
    ),
    'converter': lambda path, tmp, tool: tool.main([str(path), str(tmp / 'converted.pth')]),
    'testing_check': lambda path, tmp, tool: check_checkpoint_for_testing(
        build_tiny_model('refine'), str(path)
    ),
}


def test_plain_paths_go_through_our_loader():
    """mmdet_deformdetr replaces mmengine's '' (local file) loader and adds deformdetr://; the
    other schemes stay mmengine's."""
    assert (
        CheckpointLoader._get_checkpoint_loader('work_dirs/x/iter_2.pth') is load_from_local_safely
    )
    assert CheckpointLoader._get_checkpoint_loader('/abs/x.pth') is load_from_local_safely
    assert CheckpointLoader._get_checkpoint_loader('deformdetr:///x') is load_from_deformdetr_uri
    assert (
        CheckpointLoader._get_checkpoint_loader('https://host/x.pth')
        is mmengine_checkpoint.load_from_http
    )


def test_the_payload_is_live_under_mmengines_own_loader(evil_checkpoint, monkeypatch):
    """Positive control, and the reason for the replacement: with the variable set, mmengine's
    original local loader unpickles the file fully and the payload runs."""
    path, marker = evil_checkpoint
    monkeypatch.setenv(FORCE_NO_WEIGHTS_ONLY, '1')
    mmengine_checkpoint.load_from_local(str(path), 'cpu')
    assert marker.exists()


@pytest.mark.parametrize('path_name', list(PATHS))
@pytest.mark.parametrize(
    'force_env',
    slow_except([False, True], lambda force: force),  # the fast tier: the harder case
    ids=['default_env', 'force_no_weights_only'],
)
def test_payload_never_runs(
    path_name, force_env, evil_checkpoint, converter, tmp_path, monkeypatch
):
    path, marker = evil_checkpoint
    if force_env:
        monkeypatch.setenv(FORCE_NO_WEIGHTS_ONLY, '1')
    else:
        monkeypatch.delenv(FORCE_NO_WEIGHTS_ONLY, raising=False)
    with pytest.raises(UntrustedCheckpointError) as error:
        PATHS[path_name](path, tmp_path, converter)
    assert not marker.exists()
    message = str(error.value)
    assert message.startswith(f'refusing to load {path}: it pickles {SHELL_GLOBAL}')
    assert f'--trust-global {SHELL_GLOBAL}' in message and 'extra_globals' in message
    assert (f'{FORCE_NO_WEIGHTS_ONLY} is set' in message) is force_env
    # not torch's advice to turn the protection off
    assert 'weights_only` set to `False`' not in message
    assert 'Weights only load failed' not in message
    assert_no_chained_traceback(error.value)


@pytest.mark.parametrize('damage', slow_except(DAMAGES, lambda damage: damage == 'mid_tensor'))
@pytest.mark.parametrize('path_name', list(PATHS))
def test_damaged_checkpoint_is_one_clear_error(
    path_name, damage, training_checkpoint, converter, tmp_path
):
    path = damage_file(training_checkpoint, damage, tmp_path / 'damaged.pth')
    with pytest.raises(CorruptCheckpointError) as error:
        PATHS[path_name](path, tmp_path, converter)
    message = str(error.value)
    assert message.startswith(f'cannot read checkpoint {path} ({path.stat().st_size} bytes): ')
    assert 'Download or copy it again' in message and '--resume PATH' in message
    for leak in (
        'PytorchStreamReader',
        'EOFError',
        'Ran out of input',
        'central directory',
        'Weights only load failed',
    ):
        assert leak not in message
    assert_no_chained_traceback(error.value)


@pytest.mark.parametrize(
    'damage, reason',
    [
        ('empty', 'the file is empty'),
        ('first_100_bytes', 'it is cut short'),
        ('mid_tensor', 'it is cut short'),
        ('last_byte_missing', 'it is cut short'),
        ('random_bytes', 'it is not a torch.save file'),
    ],
)
def test_the_reason_matches_the_damage(damage, reason, training_checkpoint, tmp_path):
    path = damage_file(training_checkpoint, damage, tmp_path / 'damaged.pth')
    with pytest.raises(CorruptCheckpointError, match=reason):
        safe_load(path)


def test_damaged_legacy_file(tmp_path):
    """A pre-zip (legacy) torch.save file cut short is named as such."""
    import torch

    path = tmp_path / 'legacy.pth'
    torch.save({'w': torch.zeros(100)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptCheckpointError, match='legacy torch.save file that is cut short'):
        safe_load(path)


@pytest.mark.parametrize('path_name', [name for name in PATHS if name != 'resume'])
def test_paths_read_the_intact_checkpoint(path_name, training_checkpoint, converter, tmp_path):
    """Control for the two tests above: the undamaged file loads through every path (resume is
    exercised in test_ckpt_resume.py, which needs a training loop)."""
    result = PATHS[path_name](training_checkpoint, tmp_path, converter)
    if path_name == 'safe_load':
        assert result['meta']['iter'] == 2 and 'message_hub' in result


def test_damaged_safetensors_and_hf_config_through_deformdetr_scheme(tmp_path):
    model_dir = tmp_path / 'hf_model'
    model_dir.mkdir()
    weights = model_dir / 'model.safetensors'
    weights.write_bytes(os.urandom(64))
    with pytest.raises(
        CorruptCheckpointError,
        match=r'model\.safetensors \(64 bytes\): it is '
        'not a readable .safetensors file',
    ):
        load_checkpoint(build_tiny_model('plain'), f'deformdetr://{model_dir}')


def test_directory_given_as_plain_path_points_to_the_scheme(tmp_path):
    with pytest.raises(FileNotFoundError, match='deformdetr://'):
        load_checkpoint(build_tiny_model('plain'), str(tmp_path))
