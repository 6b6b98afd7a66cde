"""``DeformDETRHead``: per-decoder-layer classification and box branches, losses, predict."""

import copy
import math
from typing import Dict, List, Optional, Tuple, Union

import torch
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor, nn

from .geometry import apply_box_delta
from .head_loss import HungarianSetLoss

# prior probability of an object at initialisation (focal loss paper, Sec. 4.1)
_PRIOR_PROB = 0.01
# initial box size logit of the first layer's plain/refine boxes: sigmoid(-2) ~ 0.12 of the image
_INITIAL_SIZE_LOGIT = -2.0


class RegressionMLP(nn.Module):
    """Box regression branch: ``num_layers`` linear layers with ReLU between them.

    Parameters are named ``layers.{i}`` as in the official ``bbox_embed`` (documented state-dict
    keys ``bbox_head.reg_branches.{j}.layers.{0,1,2}``).

    Args:
        in_dims: input width.
        hidden_dims: width of the hidden layers.
        out_dims: output width (4 for boxes).
        num_layers: number of linear layers (>= 1).
    """

    def __init__(self, in_dims: int, hidden_dims: int, out_dims: int, num_layers: int = 3) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f'num_layers must be >= 1, got {num_layers}')
        widths = [in_dims] + [hidden_dims] * (num_layers - 1) + [out_dims]
        self.layers = nn.ModuleList(
            nn.Linear(w_in, w_out) for w_in, w_out in zip(widths[:-1], widths[1:])
        )

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``(..., in_dims)``. Returns ``(..., out_dims)``."""
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class DeformDETRHead(BaseModule):
    """Classification and regression branches of every decoder layer, and their losses.

    Branch ``i`` reads the hidden states of decoder layer ``i``; with two-stage, branch
    ``num_pred_layer - 1`` scores and regresses the encoder proposals (it is called by the
    transformer, which receives the branches as arguments). Without box refinement all branches
    are ONE module listed ``num_pred_layer`` times (shared parameters, as the official code);
    with refinement each is its own module.

    Args:
        num_classes: foreground classes (80 for COCO in mmdet's order).
        embed_dims: channels C of the hidden states (set by the detector).
        num_pred_layer: decoder layers, +1 for two-stage (set by the detector).
        with_box_refine: separate branches per layer (set by the detector).
        as_two_stage: the last branch pair scores proposals (set by the detector).
        sync_cls_avg_factor: average the classification normaliser over processes.
        loss_cls, loss_bbox, loss_iou: loss configs for mmdet's ``MODELS``.
        train_cfg: ``dict(assigner=...)``; None for inference-only models.
        test_cfg: ``dict(max_per_img=...)`` detections kept per image.
        init_cfg: mmengine initialisation config.
    """

    def __init__(
        self,
        num_classes: int,
        embed_dims: int = 256,
        num_pred_layer: int = 6,
        with_box_refine: bool = False,
        as_two_stage: bool = False,
        sync_cls_avg_factor: bool = True,
        loss_cls: dict = dict(
            type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0
        ),
        loss_bbox: dict = dict(type='L1Loss', loss_weight=5.0),
        loss_iou: dict = dict(type='GIoULoss', loss_weight=2.0),
        train_cfg: Optional[dict] = None,
        test_cfg: Optional[dict] = None,
        init_cfg: Optional[dict] = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if as_two_stage and not with_box_refine:
            # the one owner of this invariant: two-stage proposals need their own (last) branch
            # pair, which only separate per-layer branches give
            raise ValueError(
                'as_two_stage=True requires with_box_refine=True (as the official '
                'code): set model.with_box_refine=True'
            )
        if train_cfg is not None and 'assigner' not in train_cfg:
            raise ValueError(f'train_cfg must hold an assigner, got keys {sorted(train_cfg)}')
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.num_pred_layer = num_pred_layer
        self.with_box_refine = with_box_refine
        self.as_two_stage = as_two_stage
        self.train_cfg = train_cfg
        self.test_cfg = dict(max_per_img=100) if test_cfg is None else test_cfg
        self.criterion = HungarianSetLoss(
            num_classes,
            loss_cls,
            loss_bbox,
            loss_iou,
            assigner=None if train_cfg is None else train_cfg['assigner'],
            sync_cls_avg_factor=sync_cls_avg_factor,
        )

        cls_branch = nn.Linear(embed_dims, num_classes)
        reg_branch = RegressionMLP(embed_dims, embed_dims, 4, num_layers=3)
        if with_box_refine:
            self.cls_branches = nn.ModuleList(
                copy.deepcopy(cls_branch) for _ in range(num_pred_layer)
            )
            self.reg_branches = nn.ModuleList(
                copy.deepcopy(reg_branch) for _ in range(num_pred_layer)
            )
        else:
            self.cls_branches = nn.ModuleList([cls_branch] * num_pred_layer)
            self.reg_branches = nn.ModuleList([reg_branch] * num_pred_layer)
        self._reset_parameters()

    def init_weights(self) -> None:
        """Official initialisation, then ``init_cfg`` (if any) on top of it."""
        self._reset_parameters()
        super().init_weights()

    def _reset_parameters(self) -> None:
        """The official initialisation of the branches' constants.

        Classification bias from the prior 0.01; last regression layer zero (weight and bias),
        then the size logits ``bias[2:]`` (w, h) of the FIRST branch only: -2 for plain and refine
        (layer 0 turns its reference point into a box of ~0.12 of the image), 0 for two-stage
        (the proposals already carry their sizes). Branches 1.. keep 0 because each refines the
        previous layer's box in logit space: a -2 on every branch would shrink the initial boxes
        layer after layer (0.12, 0.018, 0.0025, ...). Without refinement all branches are one
        module, so "the first" is every layer's. Everything else keeps the values it was built
        with, identical in every cloned branch.
        """
        bias = -math.log((1 - _PRIOR_PROB) / _PRIOR_PROB)
        for cls_branch in self.cls_branches:
            nn.init.constant_(cls_branch.bias, bias)
        for reg_branch in self.reg_branches:
            nn.init.zeros_(reg_branch.layers[-1].weight)
            nn.init.zeros_(reg_branch.layers[-1].bias)
        if not self.as_two_stage:
            nn.init.constant_(self.reg_branches[0].layers[-1].bias[2:], _INITIAL_SIZE_LOGIT)

    def forward(
        self, hidden_states: Tensor, init_reference: Tensor, inter_references: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Scores and boxes of every decoder layer.

        Args:
            hidden_states: ``(D, bs, nq, C)``.
            init_reference: ``(bs, nq, 2|4)`` references of layer 0, in [0, 1].
            inter_references: ``(D, bs, nq, 2|4)``; entry ``i`` is the reference of layer i+1
                (the last one is unused).

        Returns:
            all_cls_scores ``(D, bs, nq, num_classes)`` logits;
            all_bbox_preds ``(D, bs, nq, 4)`` normalised ``(cx, cy, w, h)``.
        """
        all_cls_scores, all_bbox_preds = [], []
        for layer in range(hidden_states.shape[0]):
            reference = init_reference if layer == 0 else inter_references[layer - 1]
            # boxes in at least float32: under bf16 autocast an 8-bit mantissa would cost
            # several pixels on an 800-pixel image
            delta = self.reg_branches[layer](hidden_states[layer])
            precise = torch.promote_types(delta.dtype, torch.float32)
            all_cls_scores.append(self.cls_branches[layer](hidden_states[layer]))
            # a point reference locates the centre only; the size is predicted outright
            all_bbox_preds.append(apply_box_delta(delta.to(precise), reference.to(precise)))
        return torch.stack(all_cls_scores), torch.stack(all_bbox_preds)

    def loss(
        self,
        hidden_states: Tensor,
        init_reference: Tensor,
        inter_references: Tensor,
        enc_outputs_class: Optional[Tensor],
        enc_outputs_coord: Optional[Tensor],
        batch_data_samples: SampleList,
    ) -> Dict[str, Tensor]:
        """Losses of all layers (and proposals): the branches' outputs of :meth:`forward` scored
        by ``self.criterion`` (``HungarianSetLoss``, whose ``forward`` names the losses).

        Args:
            hidden_states, init_reference, inter_references: as in ``forward``.
            enc_outputs_class: ``(bs, N, num_classes)`` two-stage proposal logits, or None.
            enc_outputs_coord: ``(bs, N, 4)`` proposal boxes, or None.
            batch_data_samples: with ``gt_instances`` and metainfo ``img_shape``.
        """
        all_cls_scores, all_bbox_preds = self(hidden_states, init_reference, inter_references)
        return self.criterion(
            all_cls_scores,
            all_bbox_preds,
            enc_outputs_class,
            enc_outputs_coord,
            [sample.gt_instances for sample in batch_data_samples],
            [sample.metainfo for sample in batch_data_samples],
        )

    def predict(
        self,
        hidden_states: Tensor,
        init_reference: Tensor,
        inter_references: Tensor,
        batch_data_samples: SampleList,
        rescale: bool = True,
    ) -> List[InstanceData]:
        """Detections of the last decoder layer.

        Args:
            hidden_states, init_reference, inter_references: as in ``forward``.
            batch_data_samples: metainfo ``img_shape`` and (for rescale) ``scale_factor``.
            rescale: map boxes back to the original image with ``scale_factor``.

        Returns:
            per image ``InstanceData`` with ``bboxes (k, 4)`` xyxy, ``scores (k,)``,
            ``labels (k,)``, ``k = min(max_per_img, nq * num_classes)``.
        """
        all_cls_scores, all_bbox_preds = self(hidden_states, init_reference, inter_references)
        return self.predict_by_feat(
            all_cls_scores,
            all_bbox_preds,
            [sample.metainfo for sample in batch_data_samples],
            rescale,
        )

    def predict_by_feat(
        self,
        all_cls_scores: Tensor,
        all_bbox_preds: Tensor,
        batch_img_metas: List[dict],
        rescale: bool = True,
    ) -> List[InstanceData]:
        """Top-k over sigmoid scores of all (query, class) pairs, as the official post-process.

        Args:
            all_cls_scores: ``(D, bs, nq, num_classes)``; all_bbox_preds: ``(D, bs, nq, 4)``.
            batch_img_metas: per image ``img_shape (h, w)`` and ``scale_factor (w, h)``.
            rescale: divide boxes by ``scale_factor``.

        Returns:
            per image ``InstanceData`` as :meth:`predict`: ``bboxes (k, 4)`` xyxy pixels clamped
            to ``img_shape`` (then rescaled), ``scores (k,)`` sorted descending, ``labels (k,)``.
        """
        img_h, img_w = torch.tensor(
            [meta['img_shape'][:2] for meta in batch_img_metas], device=all_cls_scores.device
        ).unbind(-1)
        boxes, scores, labels = topk_detections(
            all_cls_scores[-1], all_bbox_preds[-1], self.test_cfg.get('max_per_img'), img_w, img_h
        )
        if rescale:
            if any(meta.get('scale_factor') is None for meta in batch_img_metas):
                raise KeyError('rescale=True needs scale_factor in the image metainfo')
            scale_factors = boxes.new_tensor([meta['scale_factor'] for meta in batch_img_metas])
            boxes = boxes / scale_factors.repeat(1, 2)[:, None]
        return [
            InstanceData(bboxes=image_boxes, scores=image_scores, labels=image_labels)
            for image_boxes, image_scores, image_labels in zip(boxes, scores, labels)
        ]


def topk_detections(
    cls_scores: Tensor,
    bbox_preds: Tensor,
    max_per_img: Optional[int],
    img_w: Union[int, Tensor],
    img_h: Union[int, Tensor],
) -> Tuple[Tensor, Tensor, Tensor]:
    """The official post-process, batched: top-k sigmoid scores over all (query, class) pairs.

    A function of tensors and sizes only, so that the ONNX export (``mmdet_deformdetr.deploy``)
    puts exactly this post-process in its graph: ``img_w`` / ``img_h`` may be symbolic sizes, and
    the clamp to the image is written as ``minimum`` with a size tensor for that reason.

    Args:
        cls_scores: ``(bs, nq, num_classes)`` logits of one decoder layer.
        bbox_preds: ``(bs, nq, 4)`` normalised ``(cx, cy, w, h)``.
        max_per_img: detections kept, ``k = min(max_per_img, nq * num_classes)``; None keeps all.
        img_w, img_h: the image size in pixels that the boxes are normalised to: one for the
            batch (ints, or symbolic sizes while exporting), or ``(bs,)`` tensors, one per image.

    Returns:
        boxes ``(bs, k, 4)`` xyxy pixels clamped to the image, scores ``(bs, k)`` sorted
        descending (at least float32), labels ``(bs, k)`` int64.
    """
    num_classes = cls_scores.shape[-1]
    num_pairs = cls_scores.shape[1] * num_classes
    num_kept = num_pairs if max_per_img is None else min(max_per_img, num_pairs)
    cls_scores = cls_scores.to(torch.promote_types(cls_scores.dtype, torch.float32))
    scores, pair_index = cls_scores.sigmoid().flatten(1).topk(num_kept, dim=1)
    labels = pair_index % num_classes
    query_index = (pair_index // num_classes)[..., None].expand(-1, -1, 4)
    boxes = bbox_cxcywh_to_xyxy(bbox_preds.gather(1, query_index))
    if isinstance(img_w, Tensor) and img_w.dim() == 1:  # one size per image: (bs, 1, 4)
        size = torch.stack([img_w, img_h, img_w, img_h], -1)[:, None].to(boxes)
    else:
        size = torch.tensor([img_w, img_h, img_w, img_h], dtype=boxes.dtype, device=boxes.device)
    boxes = torch.minimum((boxes * size).clamp(min=0), size)
    return boxes, scores, labels
