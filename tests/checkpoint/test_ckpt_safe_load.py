"""Safe loading: our formats load with weights_only=True; a pickle that would run code is
refused."""

import argparse
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.runner import load_checkpoint

from mmdet_deformdetr.checkpoint import UntrustedCheckpointError, safe_load
from mmdet_deformdetr.checkpoint.safe_load import _history_buffer_statistic

MARKER_ENV = 'DEFORMDETR_TEST_MARKER'


def write_marker(path: str) -> int:
    """The payload: proof that unpickling ran code."""
    Path(path).write_text('code ran')
    return 0


class Payload:
    """Unpickling calls write_marker(path) (a function of this test module)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return write_marker, (self.marker,)


class ShellPayload:
    """Unpickling calls os.system (module ``posix``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize(
    'payload_cls, global_name', [(Payload, 'write_marker'), (ShellPayload, 'system')]
)
def test_code_running_pickle_is_refused(payload_cls, global_name, tmp_path: Path):
    marker = tmp_path / 'marker'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': {'x': payload_cls(marker)}}, path)

    with pytest.raises(UntrustedCheckpointError, match=global_name) as error:
        safe_load(path)
    assert 'extra_globals' in str(error.value)  # says how to trust the file explicitly
    assert not marker.exists()
    # mmengine's default loader (torch.load's default weights_only=True, our allow-list) as well
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(torch.nn.Linear(1, 1), str(path), map_location='cpu')
    assert not marker.exists()

    # positive control: the payload does run when unpickled without restrictions
    if payload_cls is Payload:
        sys.modules.setdefault(Payload.__module__, sys.modules[__name__])
        torch.load(path, weights_only=False)
        assert marker.exists()


def test_opt_in_trusts_exact_global(tmp_path: Path):
    path = tmp_path / 'custom.pth'
    torch.save({'value': Path('/x')}, path)
    with pytest.raises(UntrustedCheckpointError, match='PosixPath'):
        safe_load(path)
    loaded = safe_load(path, extra_globals=[type(Path('/x'))])
    assert loaded['value'] == Path('/x')


def test_official_args_numpy_and_history_buffer_load(tmp_path: Path):
    from mmengine.logging import HistoryBuffer

    buffer = HistoryBuffer()
    buffer.update(np.float64(1.5))
    buffer.update(2.0)
    checkpoint = {
        'args': argparse.Namespace(lr=2e-4, two_stage=False, names=['a']),
        'arrays': [
            np.arange(3, dtype=np.int64),
            np.ones(2, dtype=np.float32),
            np.float64(3.0),
            np.dtype('float16'),
            np.bool_(True),
        ],
        'buffer': buffer,
    }
    path = tmp_path / 'mixed.pth'
    torch.save(checkpoint, path)
    loaded = safe_load(path)
    assert loaded['args'].lr == 2e-4 and loaded['args'].names == ['a']
    assert np.array_equal(loaded['arrays'][0], np.arange(3))
    assert loaded['arrays'][3] == np.dtype('float16')
    assert loaded['buffer'].mean() == pytest.approx(1.75)
    # a file object works as well
    with open(path, 'rb') as stream:
        assert safe_load(io.BytesIO(stream.read()))['args'].two_stage is False


def test_safe_load_leaves_the_process_allow_list_alone(tmp_path: Path):
    """torch's safe_globals context removes its entries on exit; ours must not remove the ones
    mmdet_deformdetr installed for mmengine's loaders (nor add the per-call extras for good)."""
    official_like = tmp_path / 'official_like.pth'
    torch.save({'model': {'w': torch.zeros(1)}, 'args': argparse.Namespace(lr=1.0)}, official_like)
    before = set(torch.serialization.get_safe_globals())
    odd = tmp_path / 'odd.pth'
    torch.save({'value': Path('/x')}, odd)
    safe_load(official_like)
    safe_load(odd, extra_globals=[type(Path('/x'))])
    with pytest.raises(UntrustedCheckpointError):
        safe_load(odd)
    assert set(torch.serialization.get_safe_globals()) == before
    assert torch.load(official_like)['args'].lr == 1.0  # torch's default path still allows it


def test_getattr_stand_in_only_resolves_history_buffer_statistics():
    from mmengine.logging import HistoryBuffer

    assert _history_buffer_statistic(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for owner, name in ((HistoryBuffer, '__init__'), (os, 'system'), (HistoryBuffer, 'update')):
        with pytest.raises(UntrustedCheckpointError):
            _history_buffer_statistic(owner, name)


def test_getattr_gadget_in_pickle_is_refused(tmp_path: Path):
    """``getattr(HistoryBuffer, '__init__')`` smuggled into a file must not resolve."""
    from mmengine.logging import HistoryBuffer

    class Gadget:
        def __reduce__(self):
            return getattr, (HistoryBuffer, '__init__')

    path = tmp_path / 'gadget.pth'
    torch.save({'x': Gadget()}, path)
    with pytest.raises(UntrustedCheckpointError, match='__init__'):
        safe_load(path)


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        safe_load(tmp_path / 'nope.pth')


@pytest.mark.slow
def test_install_needed_for_mmengine_in_a_fresh_process(tmp_path: Path):
    """Without importing mmdet_deformdetr, torch refuses an official file; with it, it loads."""
    path = tmp_path / 'official_like.pth'
    torch.save({'model': {'w': torch.zeros(1)}, 'args': argparse.Namespace(lr=1.0)}, path)
    code = 'import torch, sys; {}; torch.load(sys.argv[1]); print("LOADED")'
    plain = subprocess.run(
        [sys.executable, '-c', code.format('pass'), str(path)], capture_output=True, text=True
    )
    assert 'LOADED' not in plain.stdout and 'Namespace' in plain.stderr
    ours = subprocess.run(
        [sys.executable, '-c', code.format('import mmdet_deformdetr'), str(path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert 'LOADED' in ours.stdout, ours.stderr[-2000:]


@pytest.fixture
def restore_process_allow_list():
    """trust_globals widens torch's process-wide allow-list; put it back afterwards."""
    before = list(torch.serialization.get_safe_globals())
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(before)


def test_trust_globals_is_the_explicit_process_wide_opt_in(
    tmp_path: Path, restore_process_allow_list
):
    """What a tool's --trust-global calls: afterwards mmengine's loading accepts the type."""
    from mmdet_deformdetr.checkpoint import trust_globals

    path = tmp_path / 'custom.pth'
    torch.save({'state_dict': {'weight': torch.ones(1, 1)}, 'meta': {'root': Path('/x')}}, path)
    with pytest.raises(UntrustedCheckpointError, match='PosixPath'):
        load_checkpoint(torch.nn.Linear(1, 1, bias=False), str(path))
    trust_globals([f'{type(Path("/x")).__module__}.{type(Path("/x")).__qualname__}'])
    model = torch.nn.Linear(1, 1, bias=False)
    load_checkpoint(model, str(path))
    assert model.weight.item() == 1.0
