"""Checkpoint families: ONE table saying, per family, how to recognise, unwrap and convert it.

Each entry of :data:`FAMILIES` (keyed by the family's name, which reports and ``meta`` quote) is a
:class:`CheckpointFamily`:

- ``detect(state_dict) -> bool``: the family's tell-tale keys, on the bare state dict;
- ``unwrap(checkpoint) -> (state_dict, meta) | None``: its own container, if it has one
  (otherwise mmengine's ``{'meta', 'state_dict'}`` or a bare state dict is assumed);
- ``convert(state_dict, report) -> state_dict``: into our keys, recording every key in the
  :class:`~.report.ConversionReport`. A family that is another plus renames composes converters
  with :func:`chain` (Hugging Face = HF renames, then the official converter).

Entries are tried in table order; the first whose ``detect`` accepts the unwrapped dict wins.
Whatever the family, :func:`convert_state_dict` then describes the variant and remaps 91 COCO-id
class heads when the target has 80 classes. The load hook, ``deformdetr://``, the converter tool
and :func:`~.load_hook.check_checkpoint_for_testing` all go through :func:`identify`, so a new
entry is picked up everywhere.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

from torch import Tensor

from .convert_hf import hf_to_official, is_hf_state_dict
from .convert_mmdet import is_mmdet_state_dict, mmdet_to_ours
from .convert_official import (
    adapt_class_channels,
    is_official_state_dict,
    official_to_ours,
    unwrap_official,
)
from .report import ConversionReport
from .safe_load import CheckpointError
from .variant import infer_variant, is_full_detector

StateDict = Mapping[str, Tensor]
Converter = Callable[[StateDict, ConversionReport], Dict[str, Tensor]]
Unwrapper = Callable[[Mapping[str, Any]], Optional[Tuple[StateDict, dict]]]


def no_special_container(checkpoint: Mapping[str, Any]) -> None:
    """Unwrapper of families stored as mmengine stores them (or bare)."""
    return None


@dataclass(frozen=True)
class CheckpointFamily:
    """How one family of checkpoints is recognised, unwrapped and converted into our keys."""

    name: str
    detect: Callable[[Mapping[str, Any]], bool]
    convert: Converter
    unwrap: Unwrapper = no_special_container


class Identified(NamedTuple):
    """A checkpoint's family, its bare state dict (``module.`` prefixes stripped) and meta."""

    family: CheckpointFamily
    state_dict: Dict[str, Tensor]
    meta: dict


class UnknownCheckpointError(CheckpointError, ValueError):
    """The keys belong to no family of :data:`FAMILIES`."""


def chain(first: Converter, second: Converter) -> Converter:
    """The converter that runs ``first`` then ``second``, reporting source key -> our key."""

    def converter(state_dict: StateDict, report: ConversionReport) -> Dict[str, Tensor]:
        to_middle, to_ours = ConversionReport(), ConversionReport()
        converted = second(first(state_dict, to_middle), to_ours)
        report.record_chain(to_middle, to_ours)
        return converted

    converter.__name__ = f'{first.__name__}_then_{second.__name__}'
    return converter


def ours_unchanged(state_dict: StateDict, report: ConversionReport) -> Dict[str, Tensor]:
    """Converter of our own family: every key matched, nothing renamed."""
    report.matched.extend(state_dict)
    return dict(state_dict)


def is_our_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Our keys: ``transformer.level_embed`` without the official tell-tales."""
    return 'transformer.level_embed' in state_dict and not is_official_state_dict(state_dict)


OURS = 'mmdet_deformdetr'

#: name -> family, in detection order (see the module docstring to add one).
FAMILIES: Dict[str, CheckpointFamily] = {
    family.name: family
    for family in (
        CheckpointFamily(
            'Hugging Face DeformableDetrForObjectDetection',
            is_hf_state_dict,
            chain(hf_to_official, official_to_ours),
        ),
        CheckpointFamily(
            'official Deformable-DETR', is_official_state_dict, official_to_ours, unwrap_official
        ),
        CheckpointFamily(OURS, is_our_state_dict, ours_unchanged),
        CheckpointFamily('mmdet 3.x DeformableDETR', is_mmdet_state_dict, mmdet_to_ours),
    )
}


def _mmengine_or_bare(checkpoint: Mapping[str, Any]) -> Tuple[StateDict, dict]:
    if isinstance(checkpoint.get('state_dict'), Mapping):
        return checkpoint['state_dict'], dict(checkpoint.get('meta') or {})
    return checkpoint, {}


def identify(checkpoint: Mapping[str, Any]) -> Optional[Identified]:
    """The family of a loaded checkpoint (any container), or None if no entry recognises it."""
    for family in FAMILIES.values():
        state_dict, meta = family.unwrap(checkpoint) or _mmengine_or_bare(checkpoint)
        # DataParallel / DDP wrappers prefix every key with ``module.``; mmengine strips it too.
        state_dict = {
            (k[len('module.') :] if isinstance(k, str) and k.startswith('module.') else k): v
            for k, v in state_dict.items()
        }
        if family.detect(state_dict):
            return Identified(family, state_dict, dict(meta))
    return None


def identify_checkpoint(checkpoint: Mapping[str, Any], source: str = '') -> Identified:
    """:func:`identify`, raising :class:`UnknownCheckpointError` (naming ``source``) on None."""
    found = identify(checkpoint)
    if found is None:
        sample = ', '.join(str(k) for k in list(checkpoint)[:5])
        where = f'{source} is ' if source else ''
        raise UnknownCheckpointError(
            f'{where}not a Deformable DETR checkpoint of a known family ({", ".join(FAMILIES)}); '
            f'first keys: {sample}'
        )
    return found


def convert_state_dict(
    checkpoint: Mapping[str, Any],
    *,
    num_classes: Optional[int] = None,
    family: Optional[CheckpointFamily] = None,
) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Convert a checkpoint (or bare state dict) of any family of :data:`FAMILIES` to our keys.

    Args:
        checkpoint: a loaded checkpoint in any container, or a bare state dict.
        num_classes: channels of the target's classification branches; 91 COCO-id heads are
            remapped to 80 when it is 80 (:func:`~.convert_official.adapt_class_channels`). None
            keeps the source's channels.
        family: skip detection; ``checkpoint`` is then that family's bare state dict.

    Returns:
        ``(converted, report)``.

    Raises:
        UnknownCheckpointError: the keys belong to no known family.
    """
    if family is None:
        family, state_dict, _ = identify_checkpoint(checkpoint)
    else:
        state_dict = dict(checkpoint)
    report = ConversionReport(source_format=family.name)
    converted = family.convert(state_dict, report)
    if is_full_detector(converted):
        variant = infer_variant(converted)
        report.variant = variant.describe()
        if num_classes is not None:
            proposal_branch = variant.num_decoder_layers if variant.as_two_stage else -1
            adapt_class_channels(converted, num_classes, proposal_branch, report)
    return converted, report
