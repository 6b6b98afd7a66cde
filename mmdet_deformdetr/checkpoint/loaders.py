"""Reading checkpoints from disk: files, Hugging Face directories, mmengine's loader schemes, and
the checkpoint ``--resume`` continues from.

mmengine's ``CheckpointLoader`` picks a loader by the prefix of the name it is given.
``mmdet_deformdetr/__init__.py`` registers two of ours:

- ``''`` (every plain path): :func:`load_from_local_safely`, in place of mmengine's
  ``load_from_local``. That one calls ``torch.load(filename, map_location)`` without
  ``weights_only``, which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns into full unpickling (the
  payload of a malicious file runs) and which shows torch's advice to disable the protection
  when it refuses a file. Ours is :func:`~.safe_load.safe_load`: explicit ``weights_only=True``,
  our messages for refused and corrupt files. ``load_from``, ``resume``, ``tools/test.py CONFIG
  CKPT``, ``mmengine.runner.load_checkpoint``, ``DetInferencer`` and backbone ``init_cfg``
  with a local path all arrive here.
- ``deformdetr://`` (:func:`load_from_deformdetr_uri`): also ``.safetensors`` files and Hugging
  Face model directories.

Other schemes (``http://``, ``s3://``, ...) keep mmengine's loaders.
"""

import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from .convert_hf import is_hf_state_dict
from .families import UnknownCheckpointError, identify
from .safe_load import CheckpointError, corrupt_checkpoint_error, load_safetensors, safe_load

SCHEME = 'deformdetr://'


class NoCheckpointToResumeError(CheckpointError, FileNotFoundError):
    """``--resume`` without a path found no checkpoint to resume from in the work dir."""


def _hf_weights_file(directory: Path) -> Path:
    for name in ('model.safetensors', 'pytorch_model.bin'):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f'{directory} holds neither model.safetensors nor pytorch_model.bin')


def read_checkpoint(
    path: Union[str, os.PathLike], *, extra_globals: Sequence[Any] = ()
) -> Tuple[Dict[str, Any], Optional[dict]]:
    """Read a checkpoint of any supported family without running code from it.

    Args:
        path: a ``torch.save`` file (``.pth``, ``pytorch_model.bin``), a ``.safetensors`` file,
            or an HF model directory (``config.json`` + ``model.safetensors`` or
            ``pytorch_model.bin``).
        extra_globals: globals the caller trusts beyond :func:`~.safe_load.safe_globals_list`.

    Returns:
        ``(checkpoint, hf_config)``: the loaded dict and the parsed ``config.json`` next to an HF
        weights file (None when there is none).

    Raises:
        FileNotFoundError, UntrustedCheckpointError, CorruptCheckpointError,
        UnknownCheckpointError (the file holds no dict).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = _hf_weights_file(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    if path.suffix == '.safetensors':
        checkpoint: Dict[str, Any] = load_safetensors(path)
    else:
        checkpoint = safe_load(path, 'cpu', extra_globals=extra_globals)
    if not isinstance(checkpoint, Mapping):
        raise UnknownCheckpointError(
            f'{path} holds a {type(checkpoint).__name__}, not a checkpoint dict'
        )
    config_file = path.parent / 'config.json'
    hf_config = None
    if config_file.is_file() and is_hf_state_dict(checkpoint):
        try:
            hf_config = json.loads(config_file.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise corrupt_checkpoint_error(config_file, f'it is not valid JSON ({error})') from None
    return dict(checkpoint), hf_config


def _device(map_location: Any) -> str:
    return str(map_location) if isinstance(map_location, (str, torch.device)) else 'cpu'


def load_from_local_safely(filename: str, map_location: Any = None) -> Any:
    """mmengine ``CheckpointLoader`` callback for plain paths (the ``''`` scheme).

    Same contract as mmengine's ``load_from_local`` (returns what the file holds), read by
    :func:`~.safe_load.safe_load`; ``.safetensors`` files are read by safetensors.
    """
    path = os.path.expanduser(filename)
    if path.endswith('.safetensors') and os.path.isfile(path):
        return load_safetensors(path, device=_device(map_location))
    return safe_load(path, map_location)


def load_from_deformdetr_uri(filename: str, map_location: Any = None) -> dict:
    """mmengine ``CheckpointLoader`` callback for ``deformdetr://<local path>``.

    Returns:
        ``{'meta': ..., 'state_dict': ...}`` of a recognised family (its container unwrapped,
        ``meta['hf_config']`` from an HF directory), otherwise the file's dict unchanged; tensors
        are moved with ``map_location`` if given.
    """
    checkpoint, hf_config = read_checkpoint(filename[len(SCHEME) :])
    found = identify(checkpoint)
    if found is None:
        return checkpoint
    meta = dict(found.meta, **({'hf_config': hf_config} if hf_config is not None else {}))
    state_dict = found.state_dict
    if map_location is not None and not callable(map_location):
        state_dict = {
            k: v.to(map_location) if isinstance(v, torch.Tensor) else v
            for k, v in state_dict.items()
        }
    return {'meta': meta, 'state_dict': state_dict}


def find_resume_checkpoint(work_dir: Union[str, os.PathLike]) -> str:
    """The checkpoint ``--resume`` (without a path) continues from, or a clear error.

    Same rule as mmengine's ``find_latest_checkpoint`` (the path in ``work_dir/last_checkpoint``,
    which ``CheckpointHook`` writes after each save), but where mmengine returns None and the run
    silently starts at iteration 0, this raises.

    Raises:
        NoCheckpointToResumeError: no work dir, no (or an empty) ``last_checkpoint``, or one that
            names a missing file; the message lists the ``*.pth`` files found there.
    """
    work_dir = os.fspath(work_dir)
    pointer = os.path.join(work_dir, 'last_checkpoint')
    if os.path.isfile(pointer):
        with open(pointer) as stream:
            target = stream.read().strip()
        for candidate in (target, os.path.join(work_dir, target)):
            if target and os.path.isfile(candidate):
                return candidate
        problem = (
            f'{pointer} names {target}, which does not exist' if target else (f'{pointer} is empty')
        )
    elif not os.path.isdir(work_dir):
        problem = f'the work dir {work_dir} does not exist'
    else:
        problem = (
            f'{work_dir} has no last_checkpoint file (CheckpointHook writes it after each save)'
        )
    found = (
        sorted(Path(work_dir).glob('*.pth'), key=lambda p: p.stat().st_mtime)
        if (os.path.isdir(work_dir))
        else []
    )
    listing = (
        f'checkpoints there: {", ".join(p.name for p in found)}; to resume from one, name '
        f'it: --resume {found[-1]}'
        if found
        else 'there is no *.pth file there'
    )
    raise NoCheckpointToResumeError(
        f'--resume found nothing to resume from: {problem}; {listing}. To start a new run, leave '
        'out --resume; to continue another run, pass its --work-dir or --resume PATH.'
    )
