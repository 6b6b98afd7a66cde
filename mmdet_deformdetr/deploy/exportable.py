"""The module that is exported: normalised images in, the head's top-k detections out."""

from typing import Tuple

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
    """A ``DeformDETR`` as a function of one tensor, for ``torch.export`` / ONNX.

    The graph assumes that every image of the batch fills the whole input: no padding, so no
    padding masks (a single image never needs one; a batch must hold images of one size). It runs
    ``extract_feat -> forward_transformer -> bbox_head`` and the head's own post-process
    (:func:`mmdet_deformdetr.models.head.topk_detections`) on the last decoder layer.

    Args:
        detector: a built ``DeformDETR`` (eval mode is set here).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector.eval()
        self.max_per_img = detector.bbox_head.test_cfg.get('max_per_img')

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Args:
            images: ``(bs, 3, H, W)`` normalised as the config's data preprocessor does
                (mean/std, RGB order when ``bgr_to_rgb``), unpadded.

        Returns:
            boxes ``(bs, k, 4)`` ``(x1, y1, x2, y2)`` in pixels of the input, scores ``(bs, k)``
            sorted descending, labels ``(bs, k)`` int64; ``k = min(max_per_img, nq * classes)``.
        """
        detector = self.detector
        outputs = detector.forward_transformer(detector.extract_feat(images), None)
        all_cls_scores, all_bbox_preds = detector.bbox_head(
            outputs['hidden_states'], outputs['init_reference'], outputs['inter_references']
        )
        height, width = images.shape[-2:]
        return topk_detections(
            all_cls_scores[-1], all_bbox_preds[-1], self.max_per_img, width, height
        )
