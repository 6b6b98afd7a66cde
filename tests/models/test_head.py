"""DeformDETRHead on its own: box decoding from references, post-processing, loss plumbing."""

import pytest
import torch
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmengine.structures import InstanceData

from mmdet_deformdetr.models.head import DeformDETRHead, RegressionMLP
from mmdet_deformdetr.models.head_loss import NonFiniteMatchingError

DIMS, CLASSES = 16, 4
TRAIN_CFG = dict(
    assigner=dict(
        type='HungarianAssigner',
        match_costs=[
            dict(type='FocalLossCost', weight=2.0),
            dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
            dict(type='IoUCost', iou_mode='giou', weight=2.0),
        ],
    )
)


def make_head(**overrides) -> DeformDETRHead:
    args = dict(
        num_classes=CLASSES,
        embed_dims=DIMS,
        num_pred_layer=2,
        train_cfg=TRAIN_CFG,
        test_cfg=dict(max_per_img=5),
    )
    args.update(overrides)
    return DeformDETRHead(**args)


def test_point_references_locate_the_centre_only() -> None:
    head = make_head()  # fresh init: last regression layer 0, size bias -2
    hidden = torch.randn(2, 1, 3, DIMS)
    init_reference = torch.tensor([[[0.2, 0.7], [0.5, 0.5], [0.9, 0.1]]])
    _, boxes = head(hidden, init_reference, init_reference[None].expand(2, -1, -1, -1))
    expected = torch.cat([init_reference, torch.full((1, 3, 2), torch.tensor(-2.0).sigmoid())], -1)
    torch.testing.assert_close(boxes[0], expected)
    torch.testing.assert_close(boxes[1], expected)


def test_box_references_shift_all_four_logits() -> None:
    head = make_head(with_box_refine=True, as_two_stage=True, num_pred_layer=3)
    with torch.no_grad():
        head.reg_branches[1].layers[-1].bias.copy_(torch.tensor([0.0, 0.0, 1.0, -1.0]))
    hidden = torch.randn(2, 1, 1, DIMS)
    reference = torch.tensor([[[0.4, 0.6, 0.2, 0.3]]])
    _, boxes = head(hidden, reference, reference[None].expand(2, -1, -1, -1))
    torch.testing.assert_close(boxes[0], reference)  # two-stage init: zero delta
    expected = (torch.logit(reference) + torch.tensor([0.0, 0.0, 1.0, -1.0])).sigmoid()
    torch.testing.assert_close(boxes[1], expected)


def test_predict_by_feat_top_k_over_queries_and_classes() -> None:
    head = make_head()
    cls_scores = torch.full((1, 1, 3, CLASSES), -10.0)
    cls_scores[0, 0, 2, 1] = 3.0  # best: query 2, class 1
    cls_scores[0, 0, 0, 3] = 2.0  # second: query 0, class 3
    boxes = torch.tensor([[[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 2.0]]]])
    meta = dict(img_shape=(100, 200), scale_factor=(2.0, 4.0))
    result = head.predict_by_feat(cls_scores, boxes, [meta], rescale=True)[0]
    assert result.labels[:2].tolist() == [1, 3]
    torch.testing.assert_close(result.scores[:2], torch.tensor([3.0, 2.0]).sigmoid())
    # query 2: (0.25, 0.5, 0.5, 2.0) -> xyxy (0, -0.5, 0.5, 1.5) * (200, 100), clamped to the
    # image, then divided by the scale factor (w 2, h 4)
    torch.testing.assert_close(result.bboxes[0], torch.tensor([0.0, 0.0, 50.0, 25.0]))
    torch.testing.assert_close(result.bboxes[1], torch.tensor([40.0, 10.0, 60.0, 15.0]))
    assert len(result) == 5  # max_per_img


def test_predict_by_feat_is_one_batched_top_k_per_batch(monkeypatch) -> None:
    """Images of different sizes and scale factors in one batch: one call of the batched
    post-process, the same detections as each image on its own."""
    from mmdet_deformdetr.models import head as head_module

    head = make_head(test_cfg=dict(max_per_img=7))
    generator = torch.Generator().manual_seed(0)
    cls_scores = torch.randn(2, 3, 6, CLASSES, generator=generator)
    boxes = torch.rand(2, 3, 6, 4, generator=generator) * 0.8 + 0.1
    metas = [
        dict(img_shape=(100, 200), scale_factor=(2.0, 4.0)),
        dict(img_shape=(90, 60), scale_factor=(0.5, 0.25)),
        dict(img_shape=(64, 64), scale_factor=(1.0, 1.0)),
    ]
    calls, original = [], head_module.topk_detections

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(head_module, 'topk_detections', counted)
    batched = head.predict_by_feat(cls_scores, boxes, metas, rescale=True)
    assert calls == [torch.Size([3, 6, CLASSES])]
    for image, (result, meta) in enumerate(zip(batched, metas)):
        alone = head.predict_by_feat(
            cls_scores[:, image : image + 1], boxes[:, image : image + 1], [meta]
        )
        assert len(result) == 7
        # the same to float rounding (a vectorised sigmoid may round a batch's tail differently)
        torch.testing.assert_close(result.scores, alone[0].scores)
        torch.testing.assert_close(result.bboxes, alone[0].bboxes)
        assert torch.equal(result.labels, alone[0].labels)
        height, width = meta['img_shape']
        unscaled = result.bboxes * result.bboxes.new_tensor(meta['scale_factor']).repeat(2)
        assert unscaled[:, 0::2].max() <= width and unscaled[:, 1::2].max() <= height


def sample_with_gt(num_gt: int) -> DetDataSample:
    sample = DetDataSample(metainfo=dict(img_shape=(64, 80)))
    top_left = torch.rand(num_gt, 2) * 30
    sample.gt_instances = InstanceData(
        bboxes=torch.cat([top_left, top_left + 20], -1), labels=torch.randint(0, CLASSES, (num_gt,))
    )
    return sample


def test_loss_names_and_encoder_loss() -> None:
    head = make_head(with_box_refine=True, as_two_stage=True, num_pred_layer=3)
    hidden = torch.randn(2, 2, 6, DIMS)
    reference = torch.rand(2, 6, 4) * 0.5 + 0.25
    enc_class, enc_coord = torch.randn(2, 20, CLASSES), torch.rand(2, 20, 4) * 0.5 + 0.25
    losses = head.loss(
        hidden,
        reference,
        reference[None].expand(2, -1, -1, -1),
        enc_class,
        enc_coord,
        [sample_with_gt(2), sample_with_gt(1)],
    )
    assert set(losses) == {
        'loss_cls',
        'loss_bbox',
        'loss_iou',
        'd0.loss_cls',
        'd0.loss_bbox',
        'd0.loss_iou',
        'enc_loss_cls',
        'enc_loss_bbox',
        'enc_loss_iou',
    }
    assert all(value > 0 for value in losses.values())


def test_encoder_loss_labels_every_target_zero() -> None:
    """Proposals are class-agnostic: a proposal scored high on channel 0 only, sitting on the
    gt box, costs (almost) nothing whatever the gt class."""
    head = make_head()
    sample = sample_with_gt(1)
    sample.gt_instances.labels[:] = CLASSES - 1
    img_h, img_w = sample.img_shape
    x1, y1, x2, y2 = sample.gt_instances.bboxes[0].tolist()
    box = torch.tensor(
        [[(x1 + x2) / 2 / img_w, (y1 + y2) / 2 / img_h, (x2 - x1) / img_w, (y2 - y1) / img_h]]
    )
    scores = torch.full((1, 1, CLASSES), -20.0)
    scores[..., 0] = 20.0
    losses = head.criterion(
        scores[None], box[None, None], scores, box[None], [sample.gt_instances], [sample.metainfo]
    )
    assert losses['enc_loss_cls'] < 1e-6 and losses['enc_loss_bbox'] < 1e-6
    assert losses['loss_cls'] > 1.0  # the decoder loss wants class CLASSES - 1


@pytest.mark.parametrize(
    'overrides,message',
    [
        (dict(as_two_stage=True), 'model.with_box_refine=True'),
        (dict(loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False)), 'sigmoid'),
        (dict(train_cfg=dict(sampler=None)), 'assigner'),
    ],
    ids=['two_stage-without-refine', 'softmax-loss', 'no-assigner'],
)
def test_bad_head_configs(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_head(**overrides)


def test_head_without_train_cfg_refuses_losses() -> None:
    head = make_head(train_cfg=None)
    with pytest.raises(RuntimeError, match='train_cfg'):
        head.criterion(
            torch.zeros(1, 1, 2, CLASSES),
            torch.rand(1, 1, 2, 4),
            None,
            None,
            [sample_with_gt(1).gt_instances],
            [dict(img_shape=(64, 80))],
        )


def test_regression_mlp_names_and_relu() -> None:
    mlp = RegressionMLP(8, 8, 4, num_layers=3)
    assert [name for name, _ in mlp.named_parameters()] == [
        f'layers.{i}.{kind}' for i in range(3) for kind in ('weight', 'bias')
    ]
    with torch.no_grad():
        for layer in mlp.layers:
            layer.weight.copy_(torch.eye(*layer.weight.shape))
            layer.bias.zero_()
    x = torch.tensor([[1.0, -1.0, 2.0, -2.0, 0, 0, 0, 0]])
    torch.testing.assert_close(mlp(x), torch.tensor([[1.0, 0.0, 2.0, 0.0]]))


def _random_gt(num: int, img_h: int = 60, img_w: int = 80, seed: int = 0) -> InstanceData:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(num, 2, 2, generator=generator) * torch.tensor([img_w, img_h])
    boxes = torch.cat([corners.min(1).values, corners.max(1).values + 1], -1)
    return InstanceData(bboxes=boxes, labels=torch.randint(CLASSES, (num,), generator=generator))


@pytest.mark.parametrize('num_gt', [[3, 0, 5], [1, 2, 1]], ids=['with-empty-image', 'dense'])
def test_matching_all_layers_at_once_equals_the_assigner_per_layer(num_gt) -> None:
    """Our per-image matching of every layer in one go assigns exactly what mmdet's
    HungarianAssigner.assign gives layer by layer."""
    head = make_head(num_pred_layer=3)
    criterion = head.criterion
    num_layers, num_queries = 3, 7
    generator = torch.Generator().manual_seed(1)
    cls_scores = torch.randn(
        num_layers, len(num_gt), num_queries, CLASSES, generator=generator, dtype=torch.float64
    )
    bbox_preds = (
        torch.rand(
            num_layers, len(num_gt), num_queries, 4, generator=generator, dtype=torch.float64
        )
        * 0.5
        + 0.1
    )
    gts = [_random_gt(n, seed=i) for i, n in enumerate(num_gt)]
    metas = [dict(img_shape=(60, 80)) for _ in num_gt]
    targets = criterion.targets(cls_scores, bbox_preds, gts, metas, 'decoder layers')
    for layer, (labels, _, weights) in enumerate(targets):
        for image, (gt, meta) in enumerate(zip(gts, metas)):
            pred = InstanceData(
                scores=cls_scores[layer, image],
                bboxes=bbox_cxcywh_to_xyxy(bbox_preds[layer, image])
                * torch.tensor([80, 60, 80, 60]),
            )
            expected = criterion.assigner.assign(
                pred, InstanceData(bboxes=gt.bboxes.double(), labels=gt.labels), img_meta=meta
            ).gt_inds
            span = slice(image * num_queries, (image + 1) * num_queries)
            matched = weights[span, 0] > 0
            assert torch.equal(matched, expected > 0)
            expected_labels = torch.full((num_queries,), CLASSES)
            expected_labels[expected > 0] = gt.labels[expected[expected > 0] - 1]
            assert torch.equal(labels[span], expected_labels)


@pytest.mark.parametrize('poisoned', ['scores', 'boxes'])
def test_non_finite_predictions_name_the_image(poisoned: str) -> None:
    head = make_head()
    scores = torch.zeros(2, 1, 3, CLASSES)
    boxes = torch.full((2, 1, 3, 4), 0.3)
    (scores if poisoned == 'scores' else boxes)[1, 0, 2] = float('nan')  # a diverged query
    with pytest.raises(
        NonFiniteMatchingError,
        match=r'non-finite .*decoder layers of image .*photo\.jpg.*learning rate',
    ):
        head.criterion(
            scores,
            boxes,
            None,
            None,
            [_random_gt(2)],
            [dict(img_shape=(60, 80), img_path='data/photo.jpg')],
        )
