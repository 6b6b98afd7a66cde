"""Classification-channel remapping between label spaces.

The official Deformable-DETR (and the Hugging Face files converted from it) predict 91 channels
indexed by raw COCO category id; mmdet's CocoDataset uses the 80 used ids in ascending order.
"""

from typing import Dict, List, Tuple

import torch

from .report import ConversionReport


def _ids(*ranges: Tuple[int, int]) -> Tuple[int, ...]:
    return tuple(i for start, stop in ranges for i in range(start, stop + 1))


#: COCO category id of mmdet class index ``c`` (``COCO_IDS_OF_MMDET_CLASSES[c]``).
COCO_IDS_OF_MMDET_CLASSES: Tuple[int, ...] = _ids(
    (1, 11), (13, 25), (27, 28), (31, 44), (46, 65), (67, 67), (70, 70), (72, 82), (84, 90))
NUM_COCO_ID_CHANNELS = 91
assert len(COCO_IDS_OF_MMDET_CLASSES) == 80


def adapt_class_channels(state_dict: Dict[str, torch.Tensor], num_classes: int,
                         proposal_branch: int, report: ConversionReport) -> None:
    """Bring ``bbox_head.cls_branches.*`` (our keys, in place) to ``num_classes`` channels.

    - Same count: nothing to do.
    - 91 COCO-id channels to 80: decoder branches keep rows ``COCO_IDS_OF_MMDET_CLASSES`` (so our
      channel ``c`` is the official logit of mmdet class ``c``). The two-stage proposal branch
      (index ``proposal_branch``) is class-agnostic: the official code scores proposals with its
      channel 0 (objectness) and trains every other channel as a negative. We keep its first 80
      rows unchanged, so our channel 0 is the same objectness logit and the others stay as
      trained.
    - Anything else is left alone (noted in ``report``): a head for another label space is not
      reusable, and mmengine skips size-mismatched tensors with a warning, as fine-tuning expects.

    Args:
        state_dict: our keys; modified in place.
        num_classes: channels of the target model's classification branches.
        proposal_branch: index of the two-stage encoder branch (num_decoder_layers), or -1 if none.
        report: receives a note of what was done.
    """
    keys: List[str] = [k for k in state_dict if k.startswith('bbox_head.cls_branches.')]
    source_counts = {state_dict[k].shape[0] for k in keys}
    if not keys or source_counts == {num_classes}:
        return
    if source_counts != {NUM_COCO_ID_CHANNELS} or num_classes != len(COCO_IDS_OF_MMDET_CLASSES):
        # Another label space (fine-tuning on a new dataset): leave the heads alone, the loader
        # reports them as size mismatches and keeps the model's own.
        report.notes.append(f'classification branches have {sorted(source_counts)} channels, the '
                            f'model {num_classes}: not remapped (only 91 COCO ids -> 80 is)')
        return
    coco_rows = torch.tensor(COCO_IDS_OF_MMDET_CLASSES)
    proposal_prefix = f'bbox_head.cls_branches.{proposal_branch}.'
    remapped: Dict[int, torch.Tensor] = {}  # keyed by data_ptr: shared branches stay shared
    for key in keys:
        source = state_dict[key]
        if source.data_ptr() not in remapped:
            remapped[source.data_ptr()] = (source[:num_classes].clone()
                                           if key.startswith(proposal_prefix)
                                           else source.index_select(0, coco_rows))
        state_dict[key] = remapped[source.data_ptr()]
    proposal_note = (f'; two-stage proposal branch {proposal_branch} keeps channels 0..79 '
                     '(channel 0 = objectness)' if proposal_branch >= 0 else '')
    report.notes.append('classification heads remapped from 91 COCO-id channels to mmdet\'s 80 '
                        'classes' + proposal_note)
