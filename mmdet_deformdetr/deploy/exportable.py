"""The module that is exported: normalised images in, the head's top-k detections out."""

from typing import Optional, Tuple

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


class ExportableDeformDETR(nn.Module):
    """A ``DeformDETR`` as a function of tensors, for ``torch.export`` / ONNX.

    Two forms: ``images`` alone (every image fills the whole input, no padding mask; a single
    image never needs one), or ``images`` and ``img_shapes``, a padded batch of images of
    different sizes with each image's size. The second runs the detector's own padded-batch path
    (``extract_feat(images, valid_hw)`` and ``forward_transformer(feats, None, valid_hw)``,
    ``models/padding.py``): padding kept out of the backbone's convolutions and the neck's
    GroupNorm, exact level masks, no padded two-stage proposal, so that each image of the batch
    gets what it gets alone, whatever ``batch_invariant_eval`` says (that switch only chooses
    the computation of ``DeformDETR.predict``). Both run the head's own post-process
    (:func:`mmdet_deformdetr.models.head.topk_detections`) on the last decoder layer.

    The padded form needs each module's stride (``detector.padding_strides()``, one forward of a
    zero image, found on first use): ``export_onnx`` finds them before tracing, so that
    ``torch.export`` does not trace that probe.

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
        feats = detector.extract_feat(images, img_shapes)
        outputs = detector.forward_transformer(feats, None, img_shapes)
        if img_shapes is None:
            img_h, img_w = images.shape[-2:]
        else:
            img_h, img_w = img_shapes[:, 0], img_shapes[:, 1]
        all_cls_scores, all_bbox_preds = detector.bbox_head(
            outputs['hidden_states'], outputs['init_reference'], outputs['inter_references']
        )
        return topk_detections(
            all_cls_scores[-1], all_bbox_preds[-1], self.max_per_img, img_w, img_h
        )
