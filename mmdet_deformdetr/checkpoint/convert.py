"""Convert any supported checkpoint family into our state-dict keys, and check it fits a model.

Entry points:

- :func:`convert_state_dict`: state dict of any family -> our keys (+ :class:`ConversionReport`).
- :func:`check_fits`: raise a clear error when the converted weights belong to another variant.
"""

from typing import Dict, List, Mapping, Optional, Tuple

import torch

from .classes import adapt_class_channels
from .convert_hf import hf_to_official
from .convert_official import official_to_ours
from .formats import CheckpointFormat, detect_state_dict_format
from .report import ConversionReport
from .variant import infer_variant, is_full_detector, variant_mismatch


def _compose(first: ConversionReport, second: ConversionReport, result: ConversionReport) -> None:
    """Chain two renaming reports (source -> middle -> ours) into ``result``."""
    middle_to_ours = {k: k for k in second.matched}
    middle_to_ours.update(second.remapped)
    source_to_middle = {k: k for k in first.matched}
    source_to_middle.update(first.remapped)
    for source_key, middle_key in source_to_middle.items():
        if middle_key in second.dropped:
            result.dropped[source_key] = second.dropped[middle_key]
        else:
            result.record(source_key, middle_to_ours.get(middle_key, middle_key))
    result.dropped.update(first.dropped)
    result.filled.update(second.filled)
    result.filled.update(first.filled)


def _convert_mmdet(state_dict: Mapping[str, torch.Tensor],
                   report: ConversionReport) -> Dict[str, torch.Tensor]:
    # Owned by the model engineers (mmdet's module names are theirs to track); imported lazily so
    # the other families work even where that module is absent.
    from .convert_mmdet import convert_mmdet_key, convert_mmdet_state_dict

    converted = dict(convert_mmdet_state_dict(dict(state_dict)))
    for key in state_dict:
        report.record(key, convert_mmdet_key(key))
    produced = set(report.matched) | set(report.remapped.values())
    for key in converted:
        if key not in produced:
            report.filled[key] = 'added by convert_mmdet_state_dict (zero neck conv bias)'
    return converted


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], *,
                       num_classes: Optional[int] = None,
                       source_format: Optional[CheckpointFormat] = None,
                       ) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """Convert a state dict of any supported family into our keys.

    Args:
        state_dict: bare state dict (see :func:`~.formats.split_checkpoint` for containers).
        num_classes: channels of the target's classification branches; 91 COCO-id heads are
            remapped to 80 when it is 80 (see :func:`~.classes.adapt_class_channels`). None keeps
            the source's channels.
        source_format: skip detection (the caller already knows).

    Returns:
        ``(converted, report)``.

    Raises:
        ValueError: the keys belong to no supported family.
    """
    source_format = source_format or detect_state_dict_format(state_dict)
    report = ConversionReport(source_format=source_format.value)
    if source_format is CheckpointFormat.OURS:
        converted = dict(state_dict)
        report.matched.extend(converted)
    elif source_format is CheckpointFormat.OFFICIAL:
        converted = official_to_ours(state_dict, report)
    elif source_format is CheckpointFormat.HF:
        to_official, to_ours = ConversionReport(), ConversionReport()
        converted = official_to_ours(hf_to_official(state_dict, to_official), to_ours)
        _compose(to_official, to_ours, report)
    elif source_format is CheckpointFormat.MMDET:
        converted = _convert_mmdet(state_dict, report)
    else:
        sample = ', '.join(list(state_dict)[:5])
        raise ValueError('not a Deformable DETR checkpoint of a known family (official, mmdet, '
                         f'Hugging Face, mmdet_deformdetr); first keys: {sample}')
    if is_full_detector(converted):
        variant = infer_variant(converted)
        report.variant = variant.describe()
        if num_classes is not None:
            proposal_branch = variant.num_decoder_layers if variant.as_two_stage else -1
            adapt_class_channels(converted, num_classes, proposal_branch, report)
    return converted, report


def key_differences(converted: Mapping[str, torch.Tensor],
                    target: Mapping[str, torch.Tensor], max_keys: int = 8) -> List[str]:
    """Lines naming keys found on one side only, and keys whose shapes disagree.

    At most ``max_keys`` keys are named per line.
    """
    only_ckpt = [k for k in converted if k not in target]
    only_model = [k for k in target if k not in converted and not k.endswith('num_batches_tracked')]
    shapes = [f'{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(target[k].shape)}'
              for k in converted if k in target and converted[k].shape != target[k].shape]
    lines = []
    for title, items in (('only in checkpoint', only_ckpt), ('only in model', only_model),
                         ('shape differs', shapes)):
        if items:
            shown = items[:max_keys] + ([f'... ({len(items) - max_keys} more)']
                                        if len(items) > max_keys else [])
            lines.append(f'{title} ({len(items)}): ' + '; '.join(shown))
    return lines


def check_fits(converted: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
               report: Optional[ConversionReport] = None) -> None:
    """Raise ``ValueError`` when ``converted`` is another Deformable DETR variant than ``target``.

    Both dicts use our keys; ``target`` is typically ``model.state_dict()``. Partial checkpoints
    (e.g. a backbone only) are not judged. Fills ``report.missing`` / ``report.unexpected``.
    """
    if report is not None:
        report.missing = [k for k in target if k not in converted]
        report.unexpected = [k for k in converted if k not in target]
    if not (is_full_detector(converted) and is_full_detector(target)):
        return
    message = variant_mismatch(infer_variant(converted), infer_variant(target, by_identity=True))
    if message is not None:
        raise ValueError(message + '\n' + '\n'.join(key_differences(converted, target)))
