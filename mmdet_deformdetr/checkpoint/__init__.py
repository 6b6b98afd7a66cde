"""Checkpoints: one safe reader, one table of families, and the checks that a checkpoint fits.

- :mod:`.safe_load`: ``torch.load(weights_only=True)`` with the allow-list our formats need; the
  errors for refused (:class:`UntrustedCheckpointError`) and unreadable
  (:class:`CorruptCheckpointError`) files.
- :mod:`.families`: :data:`FAMILIES`, the table of checkpoint families (detect, unwrap, convert),
  and :func:`convert_state_dict`. Converters: :mod:`.convert_official`, :mod:`.convert_hf`,
  :mod:`.convert_mmdet`; bookkeeping: :mod:`.report`.
- :mod:`.variant`: which variant weights / a model / a config describe; what to change.
- :mod:`.load_hook`: the pre-hook ``DeformDETR`` registers (convert on load, refuse another
  variant, warn about heads that cannot load) and :func:`check_checkpoint_for_testing`.
- :mod:`.loaders`: reading files and HF directories, mmengine's ``''`` and ``deformdetr://``
  loader schemes, :func:`find_resume_checkpoint`.

Usage (after ``import mmdet_deformdetr``, which every config does through ``custom_imports``)::

    load_from = 'r50_deformable_detr-checkpoint.pth'        # official file, converted on load
    load_from = 'deformable-detr_r50_16xb2-50e_coco.pth'     # mmdet 3.x zoo file
    load_from = 'deformdetr:///path/to/hf_model_dir'         # HF config.json + model.safetensors
    resume = True                                            # our own checkpoints, torch >= 2.6

    # offline, with a report of matched / remapped / dropped / filled keys:
    python tools/model_converters/deformable_detr_to_mmdet_deformdetr.py SRC DST.pth

A file that pickles any other type is refused, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says;
trust it explicitly with ``safe_load(path, extra_globals=[Cls])`` or the tool's ``--trust-global``.
Every error of this package is a :class:`CheckpointError` whose message says what to do.
"""

from .families import (
    FAMILIES,
    OURS,
    CheckpointFamily,
    Identified,
    UnknownCheckpointError,
    chain,
    convert_state_dict,
    identify,
    identify_checkpoint,
)
from .load_hook import (
    CheckpointMismatchError,
    HeadsNotLoadedError,
    check_checkpoint_for_testing,
    check_fits,
    convert_checkpoint_pre_hook,
    key_differences,
)
from .loaders import (
    SCHEME,
    NoCheckpointToResumeError,
    find_resume_checkpoint,
    load_from_deformdetr_uri,
    load_from_local_safely,
    read_checkpoint,
)
from .mismatch import suggest_config, variant_mismatch
from .report import ConversionReport
from .safe_load import (
    CheckpointError,
    CorruptCheckpointError,
    UntrustedCheckpointError,
    install_safe_globals,
    safe_globals_list,
    safe_load,
    trust_globals,
    trusted_global_by_name,
)
from .variant import ModelVariant, infer_variant, variant_of_model

__all__ = [
    'FAMILIES',
    'OURS',
    'SCHEME',
    'CheckpointError',
    'CheckpointFamily',
    'CheckpointMismatchError',
    'ConversionReport',
    'CorruptCheckpointError',
    'HeadsNotLoadedError',
    'Identified',
    'ModelVariant',
    'NoCheckpointToResumeError',
    'UnknownCheckpointError',
    'UntrustedCheckpointError',
    'chain',
    'check_checkpoint_for_testing',
    'check_fits',
    'convert_checkpoint_pre_hook',
    'convert_state_dict',
    'find_resume_checkpoint',
    'identify',
    'identify_checkpoint',
    'infer_variant',
    'install_safe_globals',
    'key_differences',
    'load_from_deformdetr_uri',
    'load_from_local_safely',
    'read_checkpoint',
    'safe_globals_list',
    'safe_load',
    'suggest_config',
    'trust_globals',
    'trusted_global_by_name',
    'variant_mismatch',
    'variant_of_model',
]
