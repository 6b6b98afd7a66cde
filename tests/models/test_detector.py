"""DeformDETR end to end on tiny models: loss / predict / _forward for every variant, gradients
reach every parameter, empty ground truth, parameter sharing, build-time errors."""

import copy

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample

from tests.helpers.models import NUM_CLASSES, build_tiny_model, make_batch, tiny_model_cfg

# (variant, multi_scale_attention); the tiny models use embed_dims=32, so the two-stage cases
# also cover embed_dims != 256 (where mmdet's proposal embedding breaks)
CASES = [
    ('plain', True),
    ('refine', True),
    ('two_stage', True),
    ('plain', False),
    ('refine', False),
    ('two_stage', False),
]
IDS = [f'{variant}-{"ms" if ms else "single_level"}' for variant, ms in CASES]


def expected_loss_names(variant: str, num_decoder_layers: int = 2) -> set:
    names = {'loss_cls', 'loss_bbox', 'loss_iou'}
    names |= {
        f'd{i}.{name}'
        for i in range(num_decoder_layers - 1)
        for name in ('loss_cls', 'loss_bbox', 'loss_iou')
    }
    if variant == 'two_stage':
        names |= {'enc_loss_cls', 'enc_loss_bbox', 'enc_loss_iou'}
    return names


@pytest.mark.parametrize('variant,multi_scale', CASES, ids=IDS)
def test_loss_reaches_every_parameter(variant: str, multi_scale: bool) -> None:
    model = build_tiny_model(variant, multi_scale_attention=multi_scale)
    # move zero-initialised layers (attention logits, last box layer) off zero, so that a
    # missing gradient path shows as an exactly-zero gradient below
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(('transformer', 'bbox_head')):
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    model.train()
    data = make_batch(model, num_gt=[3, 2])
    losses = model.loss(data['inputs'], data['data_samples'])
    assert set(losses) == expected_loss_names(variant)
    assert all(torch.isfinite(value) and value > 0 for value in losses.values())
    sum(losses.values()).backward()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    # the frozen stem + layer1 of the backbone are the only parameters without gradients
    assert all(
        not name.startswith(('transformer', 'bbox_head', 'neck'))
        for name, p in model.named_parameters()
        if not p.requires_grad
    )
    without_grad = [name for name, p in trainable.items() if p.grad is None]
    assert without_grad == []
    # every path is live
    assert all(
        p.grad.abs().sum() > 0
        for name, p in trainable.items()
        if name.startswith(('transformer', 'bbox_head'))
    )


@pytest.mark.parametrize('variant,multi_scale', CASES, ids=IDS)
def test_predict_and_forward(variant: str, multi_scale: bool) -> None:
    model = build_tiny_model(variant, multi_scale_attention=multi_scale).eval()
    data = make_batch(model, training=False)
    with torch.no_grad():
        samples = model.predict(data['inputs'], copy.deepcopy(data['data_samples']))
        all_cls_scores, all_bbox_preds = model._forward(data['inputs'], data['data_samples'])
    assert all_cls_scores.shape == (2, 2, 12, NUM_CLASSES)  # (layers, bs, queries, classes)
    assert all_bbox_preds.shape == (2, 2, 12, 4)
    assert ((all_bbox_preds >= 0) & (all_bbox_preds <= 1)).all()
    for sample in samples:
        assert isinstance(sample, DetDataSample)
        pred = sample.pred_instances
        assert pred.bboxes.shape == (20, 4) and pred.scores.shape == (20,)
        assert pred.labels.min() >= 0 and pred.labels.max() < NUM_CLASSES
        assert (pred.scores[:-1] >= pred.scores[1:]).all()  # sorted top-k
        # rescale=True: boxes are in the original image, i.e. img_shape / scale_factor
        img_h, img_w = sample.img_shape
        scale_w, scale_h = sample.scale_factor
        assert (pred.bboxes[:, 0::2] <= img_w / scale_w + 1e-4).all()
        assert (pred.bboxes[:, 1::2] <= img_h / scale_h + 1e-4).all()
        assert (pred.bboxes >= 0).all()


def test_predict_rescale_divides_by_scale_factor() -> None:
    model = build_tiny_model('plain').eval()
    data = make_batch(model, training=False)
    with torch.no_grad():
        rescaled = model.predict(data['inputs'], copy.deepcopy(data['data_samples']))
        raw = model.predict(data['inputs'], copy.deepcopy(data['data_samples']), rescale=False)
    for with_rescale, without, sample in zip(rescaled, raw, data['data_samples']):
        scale = torch.tensor(sample.scale_factor, dtype=torch.float32).repeat(2)
        torch.testing.assert_close(
            with_rescale.pred_instances.bboxes, without.pred_instances.bboxes / scale
        )


@pytest.mark.parametrize('variant,multi_scale', CASES, ids=IDS)
def test_empty_ground_truth(variant: str, multi_scale: bool) -> None:
    model = build_tiny_model(variant, multi_scale_attention=multi_scale)
    model.train()
    data = make_batch(model, num_gt=[0, 0])
    losses = model.loss(data['inputs'], data['data_samples'])
    assert set(losses) == expected_loss_names(variant)
    for name, value in losses.items():
        if name.endswith('loss_cls'):
            assert value > 0, name
        else:
            assert value == 0, name
    sum(losses.values()).backward()  # still differentiable


@pytest.mark.parametrize('variant', ['plain', 'two_stage'])
def test_bf16_autocast(variant: str) -> None:
    """CPU bf16 autocast (engine/ offers it): losses train, boxes come out in float32."""
    model = build_tiny_model(variant)
    data = make_batch(model, num_gt=[2, 1])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model.loss(data['inputs'], data['data_samples'])
        sum(losses.values()).backward()
        model.eval()
        with torch.no_grad():
            samples = model.predict(data['inputs'], copy.deepcopy(data['data_samples']))
    assert all(torch.isfinite(value) for value in losses.values())
    assert samples[0].pred_instances.bboxes.dtype == torch.float32


def test_padding_masks_follow_image_shapes() -> None:
    model = build_tiny_model('plain')
    data = make_batch(model, image_shapes=((64, 64), (32, 48)))
    feats = model.extract_feat(data['inputs'])
    masks = model.padding_masks(feats, data['data_samples'])
    assert [tuple(m.shape) for m in masks] == [(2, 8, 8), (2, 4, 4), (2, 2, 2), (2, 1, 1)]
    assert not masks[0][0].any()  # the largest image is not padded
    # second image: 32 x 48 of 64 x 64 -> at stride 8, rows 4.. and columns 6.. are padding
    expected = torch.ones(8, 8, dtype=torch.bool)
    expected[:4, :6] = False
    assert torch.equal(masks[0][1], expected)
    no_samples = model.padding_masks(feats, None)
    assert not any(m.any() for m in no_samples)


@pytest.mark.slow
@pytest.mark.parametrize('variant', ['plain', 'two_stage'])
def test_channels_last_computes_the_same(variant: str) -> None:
    """``channels_last=True``: feature maps in channels-last format, losses and every gradient
    equal to the default layout's (float64, so only summation order can differ)."""
    results = {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        cfg = dict(tiny_model_cfg(variant), channels_last=channels_last)
        model = MODELS.build(cfg).double().train()
        model.load_state_dict(build_tiny_model(variant).double().state_dict())
        data = make_batch(model, num_gt=[3, 2])
        inputs = data['inputs'].double()
        feats = model.extract_feat(inputs)
        format_ = torch.channels_last if channels_last else torch.contiguous_format
        assert all(feat.is_contiguous(memory_format=format_) for feat in feats)
        conv_weights = [p for n, p in model.named_parameters() if p.dim() == 4]
        assert conv_weights and all(p.is_contiguous(memory_format=format_) for p in conv_weights)
        losses = model.loss(inputs, data['data_samples'])
        sum(losses.values()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results[channels_last] = (losses, grads)
    (losses, grads), (losses_cl, grads_cl) = results[False], results[True]
    for name in losses:
        torch.testing.assert_close(losses_cl[name], losses[name], rtol=1e-10, atol=1e-12)
    assert grads_cl.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_cl[name], grads[name], rtol=1e-8, atol=1e-10, msg=name)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # shared parameters count once


def test_branches_are_shared_without_refinement_and_separate_with_it() -> None:
    plain = MODELS.build(tiny_model_cfg('plain', num_decoder_layers=6))
    refine = MODELS.build(tiny_model_cfg('refine', num_decoder_layers=6))
    two_stage = MODELS.build(tiny_model_cfg('two_stage', num_decoder_layers=6))
    dims = 32
    one_pair = (dims * NUM_CLASSES + NUM_CLASSES) + (2 * (dims * dims + dims) + dims * 4 + 4)
    assert count(plain.bbox_head) == one_pair
    assert all(branch is plain.bbox_head.cls_branches[0] for branch in plain.bbox_head.cls_branches)
    assert all(branch is plain.bbox_head.reg_branches[0] for branch in plain.bbox_head.reg_branches)
    # refinement: six separate pairs, i.e. 5 more than the shared one
    assert count(refine) - count(plain) == 5 * one_pair
    assert count(refine.bbox_head) == 6 * one_pair
    assert len({id(branch) for branch in refine.bbox_head.reg_branches}) == 6
    # two-stage: a 7th pair for the proposals
    assert count(two_stage.bbox_head) == 7 * one_pair
    # the state dict still lists every index (as the official checkpoints)
    keys = plain.state_dict().keys()
    assert all(f'bbox_head.reg_branches.{i}.layers.2.bias' in keys for i in range(6))


def test_head_initialisation() -> None:
    plain = build_tiny_model('plain').bbox_head
    two_stage = build_tiny_model('two_stage').bbox_head
    prior_bias = -torch.log(torch.tensor(0.99 / 0.01))
    for head, size_bias in ((plain, -2.0), (two_stage, 0.0)):
        for cls_branch, reg_branch in zip(head.cls_branches, head.reg_branches):
            torch.testing.assert_close(cls_branch.bias, prior_bias.expand(NUM_CLASSES))
            last = reg_branch.layers[-1]
            assert not last.weight.any()
            torch.testing.assert_close(last.bias, torch.tensor([0, 0, size_bias, size_bias]))


def build_with(**overrides) -> torch.nn.Module:
    cfg = tiny_model_cfg('plain')
    for path, value in overrides.items():
        target = cfg
        *parents, leaf = path.split('__')
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return MODELS.build(cfg)


# (override of the tiny config, error type, what the message must name)
BUILD_ERRORS = [
    (dict(transformer__num_encoder_layer=2), TypeError, 'num_encoder_layer'),  # misspelled key
    (dict(transformer__num_heads=5), ValueError, 'divisible by num_heads'),
    (dict(as_two_stage=True), ValueError, 'model.with_box_refine=True'),
    (dict(num_feature_levels=3), ValueError, 'num_outs'),
    (dict(neck__out_channels=64), ValueError, 'out_channels'),
    (dict(transformer__num_queries=5), ValueError, 'num_queries'),  # derived: set on the model
    (dict(bbox_head__embed_dims=32), ValueError, 'embed_dims'),
]


@pytest.mark.parametrize(
    'overrides,error,message', BUILD_ERRORS, ids=[next(iter(case[0])) for case in BUILD_ERRORS]
)
def test_bad_configs_fail_at_build_time_naming_the_setting(overrides, error, message) -> None:
    with pytest.raises(error, match=message):
        build_with(**overrides)
