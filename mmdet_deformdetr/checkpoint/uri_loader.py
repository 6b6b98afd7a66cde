"""An mmengine checkpoint-loader scheme for files torch.load cannot read: ``deformdetr://``.

``load_from='deformdetr:///path/to/hf_model_dir'`` (or ``.../model.safetensors``, or any ``.pth`` we
read) loads through :func:`~.formats.read_checkpoint` (safetensors, or ``torch.load`` with
``weights_only=True``); ``DeformDETR``'s load pre-hook then converts the keys. Plain paths keep
mmengine's default loader (made safe by :func:`~.safe_load.install_safe_globals`); mmengine's
``''`` scheme is not overridden. ``mmdet_deformdetr/__init__.py`` registers the scheme.
"""

from typing import Any

from .formats import read_checkpoint, split_checkpoint

SCHEME = 'deformdetr://'


def load_from_deformdetr_uri(filename: str, map_location: Any = None) -> dict:
    """mmengine ``CheckpointLoader`` callback for ``deformdetr://<local path>``.

    Returns:
        ``{'meta': ..., 'state_dict': ...}``; tensors are moved with ``map_location`` if given.
    """
    import torch

    path = filename[len(SCHEME):]
    checkpoint, hf_config = read_checkpoint(path)
    state_dict, meta = split_checkpoint(checkpoint)
    if hf_config is not None:
        meta['hf_config'] = hf_config
    if map_location is not None and not callable(map_location):
        state_dict = {k: v.to(map_location) if isinstance(v, torch.Tensor) else v
                      for k, v in state_dict.items()}
    return {'meta': meta, 'state_dict': state_dict}
