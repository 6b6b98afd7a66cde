"""The module that is exported: normalised images in, the head's top-k detections out."""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.head import topk_detections
from ..models.layers import MSDeformAttn


def use_reference_attention(model: nn.Module) -> int:
    """Switch every deformable attention of ``model`` to ``impl='pytorch'``, the ``grid_sample``
    path made of standard operators (ONNX ``GridSample``), so that no custom-op library is
    needed. Returns how many layers were switched.

    The op picks this path by itself while exporting (``impl='auto'``); setting it explicitly
    also covers ``impl='cpu'`` / ``'cuda'`` configs and keeps eager checks on the same path.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, MSDeformAttn):
            module.impl = 'pytorch'
            count += 1
    return count


def padding_masks_from_shapes(
    feats: Sequence[Tensor], img_shapes: Tensor, input_hw: Tuple
) -> List[Tensor]:
    """Where each level's features are padding, from per-image sizes (a graph input).

    The same masks as ``DeformDETR.padding_masks`` builds from data samples (an input-resolution
    mask, True outside ``img_shape``, downsampled by nearest interpolation), written with tensor
    ops only, so that the sizes may be symbolic while exporting.

    Args:
        feats: L maps ``(bs, C, H_l, W_l)``.
        img_shapes: ``(bs, 2)`` int64, each image's unpadded ``(h, w)`` inside the batch.
        input_hw: the padded batch's ``(H, W)`` (ints or symbolic sizes).

    Returns:
        L bool masks ``(bs, H_l, W_l)``, True at padding.
    """
    input_h, input_w = input_hw
    device = img_shapes.device
    rows = torch.arange(input_h, device=device)[None, :, None] >= img_shapes[:, 0, None, None]
    cols = torch.arange(input_w, device=device)[None, None, :] >= img_shapes[:, 1, None, None]
    input_mask = (rows | cols).to(feats[0].dtype)
    return [
        F.interpolate(input_mask[None], size=feat.shape[-2:])[0].to(torch.bool) for feat in feats
    ]


class ExportableDeformDETR(nn.Module):
    """A ``DeformDETR`` as a function of tensors, for ``torch.export`` / ONNX.

    Two forms: ``images`` alone (every image fills the whole input, no padding mask; a single
    image never needs one), or ``images`` and ``img_shapes``, a padded batch of images of
    different sizes with each image's size, from which the padding masks are built in the graph
    (:func:`padding_masks_from_shapes`, as ``DeformDETR.padding_masks`` does). It runs
    ``extract_feat -> transformer -> bbox_head`` and the head's own post-process
    (:func:`mmdet_deformdetr.models.head.topk_detections`) on the last decoder layer.

    Args:
        detector: a built ``DeformDETR`` (eval mode is set here).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector.eval()
        self.max_per_img = detector.bbox_head.test_cfg.get('max_per_img')

    def forward(
        self, images: Tensor, img_shapes: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Args:
            images: ``(bs, 3, H, W)`` normalised as the config's data preprocessor does
                (mean/std, RGB order when ``bgr_to_rgb``); padded bottom/right with zeros
                when ``img_shapes`` is given, else unpadded.
            img_shapes: ``(bs, 2)`` int64, each image's ``(h, w)`` before padding, or None.

        Returns:
            boxes ``(bs, k, 4)`` ``(x1, y1, x2, y2)`` in pixels of each (unpadded) image, scores
            ``(bs, k)`` sorted descending, labels ``(bs, k)`` int64;
            ``k = min(max_per_img, nq * classes)``.
        """
        detector = self.detector
        feats = detector.extract_feat(images)
        height, width = images.shape[-2:]
        if img_shapes is None:
            outputs = detector.forward_transformer(feats, None)
            img_w, img_h = width, height
        else:
            masks = padding_masks_from_shapes(feats, img_shapes, (height, width))
            outputs = detector.transformer(
                feats,
                masks,
                [detector.positional_encoding(mask) for mask in masks],
                reg_branches=detector.bbox_head.reg_branches,
                cls_branches=detector.bbox_head.cls_branches,
            )
            img_h, img_w = img_shapes[:, 0], img_shapes[:, 1]
        all_cls_scores, all_bbox_preds = detector.bbox_head(
            outputs['hidden_states'], outputs['init_reference'], outputs['inter_references']
        )
        return topk_detections(
            all_cls_scores[-1], all_bbox_preds[-1], self.max_per_img, img_w, img_h
        )
