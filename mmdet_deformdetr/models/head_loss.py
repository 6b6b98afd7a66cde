"""Set-prediction loss of Deformable DETR: Hungarian matching, then focal / L1 / GIoU losses.

Kept apart from ``DeformDETRHead`` (which owns the branches and post-processing) so that the
matching and normalisation read on their own, as DETR's ``SetCriterion``.

Matching uses the configured assigner's own cost terms (mmdet's ``HungarianAssigner.match_costs``:
focal, L1, GIoU) and scipy's ``linear_sum_assignment``, as ``HungarianAssigner.assign`` does, but
computes the costs of all decoder layers of one image in one call of each term instead of one call
per layer: the same numbers, with far fewer small-tensor operations (one per term instead of one
per term and layer).
"""

from typing import Dict, List, Optional, Tuple

import torch
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh
from mmdet.utils import reduce_mean
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

LossTriple = Tuple[Tensor, Tensor, Tensor]
# per prediction set: labels (bs*nq,), bbox_targets (bs*nq, 4), bbox_weights (bs*nq, 4)
Targets = Tuple[Tensor, Tensor, Tensor]


class NonFiniteMatchingError(FloatingPointError):
    """Predictions (or ground truth) holding NaN / Inf reached the Hungarian matcher."""


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
        assigner: config of a ``HungarianAssigner`` (mmdet ``TASK_UTILS``) whose ``match_costs``
            define the matching cost; None builds a loss that refuses to run (test-only models).
        sync_cls_avg_factor: average the classification normaliser over processes.
    """

    def __init__(
        self,
        num_classes: int,
        loss_cls: dict,
        loss_bbox: dict,
        loss_iou: dict,
        assigner: Optional[dict],
        sync_cls_avg_factor: bool,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.loss_cls = MODELS.build(loss_cls)
        if not getattr(self.loss_cls, 'use_sigmoid', False):
            raise ValueError(
                'DeformDETRHead needs a sigmoid classification loss (e.g. FocalLoss '
                f'with use_sigmoid=True), got {loss_cls}'
            )
        self.loss_bbox = MODELS.build(loss_bbox)
        self.loss_iou = MODELS.build(loss_iou)
        self.assigner = None if assigner is None else TASK_UTILS.build(assigner)
        if self.assigner is not None and not hasattr(self.assigner, 'match_costs'):
            raise ValueError(
                'DeformDETRHead matches with the cost terms of a HungarianAssigner '
                f'(its match_costs); got {assigner}'
            )
        self.sync_cls_avg_factor = sync_cls_avg_factor

    def forward(
        self,
        all_cls_scores: Tensor,
        all_bbox_preds: Tensor,
        enc_cls_scores: Optional[Tensor],
        enc_bbox_preds: Optional[Tensor],
        batch_gt_instances: List[InstanceData],
        batch_img_metas: List[dict],
    ) -> Dict[str, Tensor]:
        """Losses of every decoder layer and, for two-stage, of the encoder proposals.

        Args:
            all_cls_scores: ``(D, bs, nq, num_classes)`` logits.
            all_bbox_preds: ``(D, bs, nq, 4)`` normalised ``(cx, cy, w, h)``.
            enc_cls_scores: ``(bs, N, num_classes)`` proposal logits, or None.
            enc_bbox_preds: ``(bs, N, 4)`` proposal boxes, or None.
            batch_gt_instances: per image ``bboxes (n, 4)`` absolute ``(x1, y1, x2, y2)`` and
                ``labels (n,)``.
            batch_img_metas: per image metainfo with ``img_shape (h, w)`` (and ``img_path``,
                named in errors).

        Returns:
            ``loss_cls``, ``loss_bbox``, ``loss_iou`` for the last layer, ``d{i}.loss_*`` for
            the others, ``enc_loss_*`` for the proposals (mmdet's names).

        Raises:
            NonFiniteMatchingError: NaN / Inf in the predictions or the ground truth, naming the
                prediction set, the images and what to check.
        """
        if self.assigner is None:
            raise RuntimeError(
                'the head was built without train_cfg (no assigner): it cannot compute losses'
            )
        num_boxes = sum(len(gt) for gt in batch_gt_instances)
        num_boxes_global = torch.clamp(
            reduce_mean(all_cls_scores.new_tensor([float(num_boxes)])), min=1
        ).item()
        cls_avg_factor = num_boxes_global if self.sync_cls_avg_factor else max(num_boxes, 1)
        factors = self._image_factors(all_bbox_preds, batch_img_metas, all_cls_scores.shape[2])

        losses: Dict[str, Tensor] = {}
        num_layers = all_cls_scores.shape[0]
        layer_targets = self.targets(
            all_cls_scores, all_bbox_preds, batch_gt_instances, batch_img_metas, 'decoder layers'
        )
        for layer, targets in enumerate(layer_targets):
            prefix = '' if layer == num_layers - 1 else f'd{layer}.'
            layer_losses = self.single(
                all_cls_scores[layer],
                all_bbox_preds[layer],
                targets,
                factors,
                cls_avg_factor,
                num_boxes_global,
            )
            for name, value in zip(('loss_cls', 'loss_bbox', 'loss_iou'), layer_losses):
                losses[prefix + name] = value
        if enc_cls_scores is not None:
            # proposals are class-agnostic: every target is "object" = channel 0
            agnostic_gt = [
                InstanceData(bboxes=gt.bboxes, labels=torch.zeros_like(gt.labels))
                for gt in batch_gt_instances
            ]
            enc_targets = self.targets(
                enc_cls_scores[None],
                enc_bbox_preds[None],
                agnostic_gt,
                batch_img_metas,
                'two-stage proposals',
            )[0]
            enc_factors = self._image_factors(
                enc_bbox_preds[None], batch_img_metas, enc_cls_scores.shape[1]
            )
            enc_losses = self.single(
                enc_cls_scores,
                enc_bbox_preds,
                enc_targets,
                enc_factors,
                cls_avg_factor,
                num_boxes_global,
            )
            for name, value in zip(('loss_cls', 'loss_bbox', 'loss_iou'), enc_losses):
                losses['enc_' + name] = value
        return losses

    def single(
        self,
        cls_scores: Tensor,
        bbox_preds: Tensor,
        targets: Targets,
        factors: Tensor,
        cls_avg_factor: float,
        num_boxes: float,
    ) -> LossTriple:
        """Losses of one prediction set.

        Args:
            cls_scores: ``(bs, nq, num_classes)`` logits.
            bbox_preds: ``(bs, nq, 4)`` normalised ``(cx, cy, w, h)``.
            targets: from :meth:`targets`, for this set.
            factors: ``(bs * nq, 4)`` ``(w, h, w, h)`` of each query's image.
            cls_avg_factor: normaliser of the classification loss.
            num_boxes: normaliser of the box losses.

        Returns:
            loss_cls, loss_bbox, loss_iou (scalars; box losses are 0 without ground truth).
        """
        labels, bbox_targets, bbox_weights = targets
        loss_cls = self.loss_cls(
            cls_scores.reshape(-1, self.num_classes),
            labels,
            torch.ones_like(labels, dtype=cls_scores.dtype),
            avg_factor=cls_avg_factor,
        )
        bbox_preds = bbox_preds.reshape(-1, 4)
        loss_bbox = self.loss_bbox(bbox_preds, bbox_targets, bbox_weights, avg_factor=num_boxes)
        # GIoU is invariant to per-axis scaling, so pixels (as mmdet) give the official
        # normalised-box value; pixels keep rounding-level parity with mmdet
        loss_iou = self.loss_iou(
            bbox_cxcywh_to_xyxy(bbox_preds) * factors,
            bbox_cxcywh_to_xyxy(bbox_targets) * factors,
            bbox_weights,
            avg_factor=num_boxes,
        )
        return loss_cls, loss_bbox, loss_iou

    @torch.no_grad()
    def targets(
        self,
        cls_scores: Tensor,
        bbox_preds: Tensor,
        batch_gt_instances: List[InstanceData],
        batch_img_metas: List[dict],
        what: str,
    ) -> List[Targets]:
        """Match each of S prediction sets (decoder layers) to the ground truth, image by image.

        Args:
            cls_scores: ``(S, bs, nq, num_classes)`` logits.
            bbox_preds: ``(S, bs, nq, 4)`` normalised ``(cx, cy, w, h)``.
            batch_gt_instances, batch_img_metas: as in ``forward``.
            what: the prediction sets' name, for error messages.

        Returns:
            per set: labels ``(bs * nq,)`` long (``num_classes`` = background), bbox_targets
            ``(bs * nq, 4)`` normalised cxcywh, bbox_weights ``(bs * nq, 4)`` (1 at matched
            queries).
        """
        num_sets, batch_size, num_queries = cls_scores.shape[:3]
        labels = torch.full(
            (num_sets, batch_size, num_queries),
            self.num_classes,
            dtype=torch.long,
            device=cls_scores.device,
        )
        bbox_targets = torch.zeros_like(bbox_preds)
        bbox_weights = torch.zeros_like(bbox_preds)
        for image, (gt, img_meta) in enumerate(zip(batch_gt_instances, batch_img_metas)):
            if len(gt) == 0:
                continue  # every query is background
            img_h, img_w = img_meta['img_shape'][:2]
            factor = bbox_preds.new_tensor([img_w, img_h, img_w, img_h])
            gt_bboxes = gt.bboxes.to(bbox_preds.dtype)
            # the S sets of this image as one prediction list, so each cost term runs once
            pred_instances = InstanceData(
                scores=cls_scores[:, image].flatten(0, 1),
                bboxes=bbox_cxcywh_to_xyxy(bbox_preds[:, image].flatten(0, 1)) * factor,
            )
            gt_instances = InstanceData(bboxes=gt_bboxes, labels=gt.labels)
            cost = (
                torch.stack(
                    [
                        match_cost(
                            pred_instances=pred_instances,
                            gt_instances=gt_instances,
                            img_meta=img_meta,
                        )
                        for match_cost in self.assigner.match_costs
                    ]
                )
                .sum(0)
                .view(num_sets, num_queries, len(gt))
            )  # summed as HungarianAssigner does
            if not torch.isfinite(cost).all():
                raise self._non_finite(
                    cls_scores[:, image], bbox_preds[:, image], gt_bboxes, img_meta, what
                )
            target_boxes = bbox_xyxy_to_cxcywh(gt_bboxes / factor)
            for index, set_cost in enumerate(cost.cpu()):
                rows, cols = linear_sum_assignment(set_cost)
                rows = torch.as_tensor(rows, dtype=torch.long, device=cls_scores.device)
                cols = torch.as_tensor(cols, dtype=torch.long, device=cls_scores.device)
                labels[index, image, rows] = gt.labels[cols].to(labels)
                bbox_targets[index, image, rows] = target_boxes[cols]
                bbox_weights[index, image, rows] = 1.0
        return [
            (
                labels[index].flatten(),
                bbox_targets[index].flatten(0, 1),
                bbox_weights[index].flatten(0, 1),
            )
            for index in range(num_sets)
        ]

    @staticmethod
    def _image_factors(bbox_preds: Tensor, batch_img_metas: List[dict], num_queries: int) -> Tensor:
        """``(bs * nq, 4)`` ``(w, h, w, h)`` of each query's image (pixels from normalised)."""
        factors = [
            bbox_preds.new_tensor([meta['img_shape'][1], meta['img_shape'][0]] * 2)
            for meta in batch_img_metas
        ]
        return torch.stack(factors).repeat_interleave(num_queries, dim=0)

    @staticmethod
    def _non_finite(
        cls_scores: Tensor, bbox_preds: Tensor, gt_bboxes: Tensor, img_meta: dict, what: str
    ) -> NonFiniteMatchingError:
        bad = [
            name
            for name, tensor in (
                ('classification scores', cls_scores),
                ('predicted boxes', bbox_preds),
                ('ground-truth boxes', gt_bboxes),
            )
            if not torch.isfinite(tensor).all()
        ]
        image = img_meta.get('img_path', '(no img_path in the metainfo)')
        if bad == ['ground-truth boxes']:
            advice = 'the annotation of this image holds NaN/Inf coordinates: fix or drop it'
        else:
            advice = (
                'the model produced NaN/Inf: training diverged (lower the learning rate, '
                'check optim_wrapper.clip_grad, resume from the last good checkpoint) or '
                'the input image holds NaN/Inf values'
            )
        return NonFiniteMatchingError(
            f'non-finite {" and ".join(bad) or "matching cost"} in the {what} of image {image} '
            f'reached the Hungarian matcher: {advice}'
        )
