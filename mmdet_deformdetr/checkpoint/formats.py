"""Recognise a checkpoint's family from its contents, and read any of them from disk safely.

Families (:class:`CheckpointFormat`):

=========  ===================================================  ====================================
family     container                                            tell-tale keys of the state dict
=========  ===================================================  ====================================
OURS       ``{'meta', 'state_dict', ...}`` or bare              ``transformer.level_embed`` and
                                                                ``bbox_head.*`` / ``neck.*``
OFFICIAL   ``{'model', 'optimizer', 'lr_scheduler', 'epoch',    ``transformer.level_embed`` and
           'args'}``                                            ``class_embed.*`` / ``input_proj.*``
MMDET      ``{'meta', 'state_dict'}`` (mmdet 3.x zoo)           top-level ``level_embed``,
                                                                ``encoder.layers.*``
HF         bare (``pytorch_model.bin``, ``model.safetensors``)  ``model.level_embed``
=========  ===================================================  ====================================
"""

import enum
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from .safe_load import load_safetensors, safe_load


class CheckpointFormat(str, enum.Enum):
    """Checkpoint families this package converts."""

    OURS = 'mmdet_deformdetr'
    OFFICIAL = 'official Deformable-DETR'
    MMDET = 'mmdet 3.x DeformableDETR'
    HF = 'Hugging Face DeformableDetrForObjectDetection'
    UNKNOWN = 'unknown'


def detect_state_dict_format(state_dict: Mapping[str, Any]) -> CheckpointFormat:
    """Family of a bare state dict, from its keys."""
    keys = [k for k in state_dict if isinstance(k, str)]
    if 'model.level_embed' in state_dict:
        return CheckpointFormat.HF
    if 'transformer.level_embed' in state_dict:
        if any(k.startswith(('class_embed.', 'input_proj.', 'backbone.0.body.')) for k in keys):
            return CheckpointFormat.OFFICIAL
        return CheckpointFormat.OURS
    if 'level_embed' in state_dict or any(k.startswith('encoder.layers.') for k in keys):
        return CheckpointFormat.MMDET
    return CheckpointFormat.UNKNOWN


def is_official_container(checkpoint: Mapping[str, Any]) -> bool:
    """An official ``torch.save`` dict: the weights sit under ``'model'``, next to
    ``args``/``epoch``."""
    return isinstance(checkpoint.get('model'), Mapping) and 'state_dict' not in checkpoint


def split_checkpoint(checkpoint: Mapping[str, Any]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """The state dict and meta of any supported container (``module.`` prefixes stripped).

    Returns:
        ``(state_dict, meta)``; ``meta`` is the file's ``meta`` (mmengine), a few official
        ``args``, or empty.
    """
    meta: dict = {}
    if is_official_container(checkpoint):
        from .convert_official import split_official_checkpoint

        state_dict, meta = split_official_checkpoint(checkpoint)
    elif isinstance(checkpoint.get('state_dict'), Mapping):
        state_dict = checkpoint['state_dict']
        meta = dict(checkpoint.get('meta') or {})
    else:
        state_dict = checkpoint
    # DataParallel / DDP wrappers prefix every key with ``module.``; mmengine strips it as well.
    return {(k[len('module.'):] if k.startswith('module.') else k): v
            for k, v in state_dict.items()}, meta


def _hf_weights_file(directory: Path) -> Path:
    for name in ('model.safetensors', 'pytorch_model.bin'):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f'{directory} holds neither model.safetensors nor pytorch_model.bin')


def read_checkpoint(path: Union[str, os.PathLike], *,
                    extra_globals: Sequence[Any] = ()) -> Tuple[Dict[str, Any], Optional[dict]]:
    """Read a checkpoint of any supported family without running code from it.

    Args:
        path: a ``torch.save`` file (``.pth``, ``pytorch_model.bin``), a ``.safetensors`` file,
            or an HF model directory (``config.json`` + ``model.safetensors`` or
            ``pytorch_model.bin``).
        extra_globals: globals the caller trusts beyond :func:`~.safe_load.safe_globals_list`.

    Returns:
        ``(checkpoint, hf_config)``: the loaded dict and the parsed ``config.json`` next to an HF
        weights file (None when there is none).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = _hf_weights_file(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if path.suffix == '.safetensors':
        checkpoint: Dict[str, Any] = load_safetensors(path)
    else:
        checkpoint = safe_load(path, 'cpu', extra_globals=extra_globals)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'{path} holds a {type(checkpoint).__name__}, not a checkpoint dict')
    config_file = path.parent / 'config.json'
    hf_config = None
    if config_file.is_file() and detect_state_dict_format(
            split_checkpoint(checkpoint)[0]) is CheckpointFormat.HF:
        hf_config = json.loads(config_file.read_text())
    return dict(checkpoint), hf_config
