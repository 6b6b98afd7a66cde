"""Checkpoints: safe loading, format detection and conversion into mmdet_deformdetr's keys.

- :mod:`.safe_load`: ``torch.load(weights_only=True)`` with the allow-list our formats need.
- :mod:`.formats`: which family a checkpoint belongs to; reading files and HF directories.
- :mod:`.convert`: official / mmdet / Hugging Face -> our keys, and variant checks.
- :mod:`.load_hook`: the pre-hook ``DeformDETR`` registers so mmengine's loaders convert on the fly.
- :mod:`.uri_loader`: the ``deformdetr://`` mmengine loader scheme (safetensors, HF directories).

Usage (after ``import mmdet_deformdetr``, which every config does through ``custom_imports``)::

    load_from = 'r50_deformable_detr-checkpoint.pth'        # official file, converted on load
    load_from = 'deformable-detr_r50_16xb2-50e_coco.pth'     # mmdet 3.x zoo file
    load_from = 'deformdetr:///path/to/hf_model_dir'         # HF config.json + model.safetensors
    resume = True                                            # our own checkpoints, torch >= 2.6

    # offline, with a report of matched / remapped / dropped / filled keys:
    python tools/model_converters/deformable_detr_to_mmdet_deformdetr.py SRC DST.pth

A file that pickles any other type is refused (:class:`UntrustedCheckpointError` names it); trust it
explicitly with ``safe_load(path, extra_globals=[Cls])`` or the tool's ``--trust-global``.
"""
from .convert import check_fits, convert_state_dict, key_differences
from .formats import CheckpointFormat, detect_state_dict_format, read_checkpoint, split_checkpoint
from .load_hook import convert_checkpoint_pre_hook
from .report import ConversionReport
from .safe_load import UntrustedCheckpointError, install_safe_globals, safe_globals_list, safe_load
from .uri_loader import SCHEME, load_from_deformdetr_uri
from .variant import ModelVariant, infer_variant, suggest_config, variant_mismatch

__all__ = [
    'CheckpointFormat', 'ConversionReport', 'ModelVariant', 'SCHEME', 'UntrustedCheckpointError',
    'check_fits', 'convert_checkpoint_pre_hook', 'convert_state_dict', 'detect_state_dict_format',
    'infer_variant', 'install_safe_globals', 'key_differences', 'load_from_deformdetr_uri',
    'read_checkpoint', 'safe_globals_list', 'safe_load', 'split_checkpoint', 'suggest_config',
    'variant_mismatch'
]
