"""Set-prediction loss of Deformable DETR: Hungarian matching, then focal / L1 / GIoU losses.

Kept apart from ``DeformDETRHead`` (which owns the branches and post-processing) so that the
matching and normalisation read on their own, as DETR's ``SetCriterion``.
"""
from typing import Dict, List, Optional, Tuple

import torch
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh
from mmdet.utils import reduce_mean
from mmengine.structures import InstanceData
from torch import Tensor, nn

LossTriple = Tuple[Tensor, Tensor, Tensor]


class HungarianSetLoss(nn.Module):
    """Match queries to ground truth one-to-one, then average the losses over the boxes.

    The normaliser of every loss is the number of ground-truth boxes in the batch, averaged over
    processes (at least 1), as the official code; with ``sync_cls_avg_factor=False`` the
    classification loss uses the local count instead.

    Args:
        num_classes: foreground classes; background targets get label ``num_classes``.
        loss_cls: config of a sigmoid classification loss (``FocalLoss``), mmdet ``MODELS``.
        loss_bbox: config of the L1 loss on normalised ``(cx, cy, w, h)``.
        loss_iou: config of the IoU loss on absolute ``(x1, y1, x2, y2)``.
        assigner: config of the assigner (``HungarianAssigner``), mmdet ``TASK_UTILS``; None
            builds a loss that refuses to run (test-only models).
        sync_cls_avg_factor: average the classification normaliser over processes.
    """

    def __init__(self, num_classes: int, loss_cls: dict, loss_bbox: dict, loss_iou: dict,
                 assigner: Optional[dict], sync_cls_avg_factor: bool) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.loss_cls = MODELS.build(loss_cls)
        if not getattr(self.loss_cls, 'use_sigmoid', False):
            raise ValueError('DeformDETRHead needs a sigmoid classification loss (e.g. FocalLoss '
                             f'with use_sigmoid=True), got {loss_cls}')
        self.loss_bbox = MODELS.build(loss_bbox)
        self.loss_iou = MODELS.build(loss_iou)
        self.assigner = None if assigner is None else TASK_UTILS.build(assigner)
        self.sync_cls_avg_factor = sync_cls_avg_factor

    def forward(self, all_cls_scores: Tensor, all_bbox_preds: Tensor,
                enc_cls_scores: Optional[Tensor], enc_bbox_preds: Optional[Tensor],
                batch_gt_instances: List[InstanceData],
                batch_img_metas: List[dict]) -> Dict[str, Tensor]:
        """Losses of every decoder layer and, for two-stage, of the encoder proposals.

        Args:
            all_cls_scores: ``(D, bs, nq, num_classes)`` logits.
            all_bbox_preds: ``(D, bs, nq, 4)`` normalised ``(cx, cy, w, h)``.
            enc_cls_scores: ``(bs, N, num_classes)`` proposal logits, or None.
            enc_bbox_preds: ``(bs, N, 4)`` proposal boxes, or None.
            batch_gt_instances: per image ``bboxes (n, 4)`` absolute ``(x1, y1, x2, y2)`` and
                ``labels (n,)``.
            batch_img_metas: per image metainfo with ``img_shape (h, w)``.

        Returns:
            ``loss_cls``, ``loss_bbox``, ``loss_iou`` for the last layer, ``d{i}.loss_*`` for
            the others, ``enc_loss_*`` for the proposals (mmdet's names).
        """
        if self.assigner is None:
            raise RuntimeError('the head was built without train_cfg (no assigner): it cannot '
                               'compute losses')
        num_boxes = sum(len(gt) for gt in batch_gt_instances)
        num_boxes_global = torch.clamp(
            reduce_mean(all_cls_scores.new_tensor([float(num_boxes)])), min=1).item()
        cls_avg_factor = num_boxes_global if self.sync_cls_avg_factor else max(num_boxes, 1)

        losses: Dict[str, Tensor] = {}
        num_layers = all_cls_scores.shape[0]
        for layer in range(num_layers):
            prefix = '' if layer == num_layers - 1 else f'd{layer}.'
            layer_losses = self.single(all_cls_scores[layer], all_bbox_preds[layer],
                                       batch_gt_instances, batch_img_metas,
                                       cls_avg_factor, num_boxes_global)
            for name, value in zip(('loss_cls', 'loss_bbox', 'loss_iou'), layer_losses):
                losses[prefix + name] = value
        if enc_cls_scores is not None:
            # proposals are class-agnostic: every target is "object" = channel 0
            agnostic_gt = [InstanceData(bboxes=gt.bboxes, labels=torch.zeros_like(gt.labels))
                           for gt in batch_gt_instances]
            enc_losses = self.single(enc_cls_scores, enc_bbox_preds, agnostic_gt,
                                     batch_img_metas, cls_avg_factor, num_boxes_global)
            for name, value in zip(('loss_cls', 'loss_bbox', 'loss_iou'), enc_losses):
                losses['enc_' + name] = value
        return losses

    def single(self, cls_scores: Tensor, bbox_preds: Tensor,
               batch_gt_instances: List[InstanceData], batch_img_metas: List[dict],
               cls_avg_factor: float, num_boxes: float) -> LossTriple:
        """Losses of one prediction set.

        Args:
            cls_scores: ``(bs, nq, num_classes)`` logits.
            bbox_preds: ``(bs, nq, 4)`` normalised ``(cx, cy, w, h)``.
            batch_gt_instances, batch_img_metas: as in ``forward``.
            cls_avg_factor: normaliser of the classification loss.
            num_boxes: normaliser of the box losses.

        Returns:
            loss_cls, loss_bbox, loss_iou (scalars; box losses are 0 without ground truth).
        """
        with torch.no_grad():
            targets = [self._targets_single(score, pred, gt, meta) for score, pred, gt, meta
                       in zip(cls_scores, bbox_preds, batch_gt_instances, batch_img_metas)]
        labels, bbox_targets, bbox_weights, factors = (torch.cat(t) for t in zip(*targets))
        loss_cls = self.loss_cls(cls_scores.reshape(-1, self.num_classes), labels,
                                 torch.ones_like(labels, dtype=cls_scores.dtype),
                                 avg_factor=cls_avg_factor)
        bbox_preds = bbox_preds.reshape(-1, 4)
        loss_bbox = self.loss_bbox(bbox_preds, bbox_targets, bbox_weights, avg_factor=num_boxes)
        # GIoU is invariant to per-axis scaling, so pixels (as mmdet) give the official
        # normalised-box value; pixels keep rounding-level parity with mmdet
        loss_iou = self.loss_iou(bbox_cxcywh_to_xyxy(bbox_preds) * factors,
                                 bbox_cxcywh_to_xyxy(bbox_targets) * factors, bbox_weights,
                                 avg_factor=num_boxes)
        return loss_cls, loss_bbox, loss_iou

    def _targets_single(self, cls_score: Tensor, bbox_pred: Tensor, gt_instances: InstanceData,
                        img_meta: dict) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Match one image's queries to its ground truth.

        Args:
            cls_score: ``(nq, num_classes)`` logits; bbox_pred: ``(nq, 4)`` normalised cxcywh.
            gt_instances: ``bboxes (n, 4)`` absolute xyxy, ``labels (n,)``.
            img_meta: with ``img_shape (h, w)``.

        Returns:
            labels ``(nq,)`` long (``num_classes`` = background), bbox_targets ``(nq, 4)``
            normalised cxcywh, bbox_weights ``(nq, 4)`` (1 at matched queries), factors
            ``(nq, 4)`` ``(w, h, w, h)`` of the image.
        """
        img_h, img_w = img_meta['img_shape'][:2]
        factor = bbox_pred.new_tensor([img_w, img_h, img_w, img_h])[None]
        num_queries = bbox_pred.shape[0]
        pred_instances = InstanceData(scores=cls_score,
                                      bboxes=bbox_cxcywh_to_xyxy(bbox_pred) * factor)
        gt_instances = InstanceData(bboxes=gt_instances.bboxes.to(bbox_pred.dtype),
                                    labels=gt_instances.labels)
        assign_result = self.assigner.assign(pred_instances=pred_instances,
                                             gt_instances=gt_instances, img_meta=img_meta)
        matched = torch.nonzero(assign_result.gt_inds > 0, as_tuple=False).squeeze(-1)
        matched_gt = assign_result.gt_inds[matched] - 1
        labels = torch.full((num_queries,), self.num_classes, dtype=torch.long,
                            device=bbox_pred.device)
        labels[matched] = gt_instances.labels[matched_gt].to(labels)
        bbox_targets = torch.zeros_like(bbox_pred)
        bbox_weights = torch.zeros_like(bbox_pred)
        bbox_targets[matched] = bbox_xyxy_to_cxcywh(gt_instances.bboxes[matched_gt] / factor)
        bbox_weights[matched] = 1.0
        return labels, bbox_targets, bbox_weights, factor.expand(num_queries, 4)
