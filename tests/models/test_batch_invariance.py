"""An image predicts the same alone and inside a padded batch of images of other sizes
(``models/padding.py``), in float64 so that float noise cannot hide a real difference; the
switch ``batch_invariant_eval=False`` keeps the official computation (its parity with mmdet on a
padded batch is ``tests/models/test_parity_mmdet.py``), and training does not change."""

import copy
from typing import Tuple

import pytest
import torch
from torch import Tensor, nn

from mmdet_deformdetr.models.padding import (
    masked_group_norm,
    padding_kept_out,
    padding_mask,
    probe_strides,
)
from tests.helpers.models import VARIANTS, as_double, build_tiny_model, make_batch, perturb_
from tests.helpers.tiers import slow_except

# three sizes whose levels pad differently (odd sizes: ceil at every stride)
IMAGE_SHAPES = ((96, 96), (80, 72), (67, 93))
# float64: what is left of the padding's effect is rounding
TOLERANCE = 1e-9


def largest_differences(model: nn.Module, data: dict) -> Tuple[float, float]:
    """Largest box difference (px, every decoder layer) and score difference between the padded
    batch and each image run alone (its own unpadded tensor and metainfo)."""
    inputs, samples = data['inputs'], data['data_samples']
    with torch.no_grad():
        batch_scores, batch_boxes = model._forward(inputs, copy.deepcopy(samples))
        box_diff = score_diff = 0.0
        for index, sample in enumerate(samples):
            height, width = sample.img_shape[:2]
            alone = copy.deepcopy(sample)
            alone.set_metainfo(dict(batch_input_shape=(height, width)))
            image = inputs[index : index + 1, :, :height, :width].contiguous()
            scores, boxes = model._forward(image, [alone])
            scale = boxes.new_tensor([width, height, width, height])
            box_diff = max(box_diff, ((boxes[:, 0] - batch_boxes[:, index]) * scale).abs().max())
            score_diff = max(
                score_diff, (scores[:, 0].sigmoid() - batch_scores[:, index].sigmoid()).abs().max()
            )
    return float(box_diff), float(score_diff)


def tiny_double(variant: str, **kwargs) -> nn.Module:
    # every weight off its initialisation, the backbone's too (its BN shifts feed the padding)
    return perturb_(build_tiny_model(variant, **kwargs), skip=()).double().eval()


@pytest.mark.parametrize('variant', slow_except(list(VARIANTS), lambda v: v == 'two_stage'))
def test_padded_batch_equals_each_image_alone(variant: str) -> None:
    model = tiny_double(variant)
    with torch.no_grad():
        assert model.uses_inference_copy()  # the eval-time fused copy is what gets masked
    data = as_double(make_batch(model, image_shapes=IMAGE_SHAPES, training=False))
    box_diff, score_diff = largest_differences(model, data)
    assert box_diff <= TOLERANCE and score_diff <= TOLERANCE

    # the official computation, kept behind the switch, depends on the batch
    model.batch_invariant_eval = False
    box_diff, score_diff = largest_differences(model, data)
    assert box_diff > 1e-3 and score_diff > 1e-5


@pytest.mark.parametrize(
    'channels_last', slow_except([False, True], bool), ids=['contiguous', 'channels_last']
)
def test_single_level_attention_and_memory_formats(channels_last: bool) -> None:
    model = tiny_double('refine', multi_scale_attention=False)
    if channels_last:
        model.channels_last = True
        model.backbone.to(memory_format=torch.channels_last)
        model.neck.to(memory_format=torch.channels_last)
    data = as_double(make_batch(model, image_shapes=IMAGE_SHAPES, training=False))
    assert max(largest_differences(model, data)) <= TOLERANCE


def test_training_is_untouched() -> None:
    """In training mode the switch changes nothing: the same losses bit for bit."""
    model = perturb_(build_tiny_model('two_stage'), skip=()).double().train()
    data = as_double(make_batch(model, image_shapes=IMAGE_SHAPES, num_gt=[2, 1, 3]))
    assert model.valid_sizes(data['data_samples']) is None
    losses = {}
    for switch in (True, False):
        model.batch_invariant_eval = switch
        torch.manual_seed(0)
        losses[switch] = model.loss(data['inputs'], copy.deepcopy(data['data_samples']))
    for name, value in losses[True].items():
        assert torch.equal(value, losses[False][name]), name


def test_nothing_is_masked_without_padding() -> None:
    model = build_tiny_model('plain').eval()
    data = make_batch(model, image_shapes=((64, 80), (64, 80)), training=False)
    assert model.valid_sizes(data['data_samples']) is None
    padded = make_batch(model, image_shapes=((64, 80), (64, 72)), training=False)
    assert model.valid_sizes(padded['data_samples']).tolist() == [[64, 80], [64, 72]]


def test_strides_of_a_resnet() -> None:
    model = build_tiny_model('plain').eval()
    strides, levels = probe_strides(model.backbone, model.neck)
    assert levels == [8, 16, 32, 64]
    assert strides['backbone.conv1'] == 1 and strides['backbone.maxpool'] == 2
    assert strides['backbone.layer1.0.conv1'] == 4
    assert strides['backbone.layer2.0.conv1'] == 4  # the 3x3 stride-2 convolution's input
    assert strides['neck.extra_convs.0.conv'] == 32  # the fourth level, from C5
    assert strides['neck.convs.0.gn'] == 8 and strides['neck.extra_convs.0.gn'] == 64
    # 1x1 convolutions read no neighbours: never masked
    assert 'backbone.layer1.0.conv3' not in strides and 'neck.convs.0.conv' not in strides
    assert model.training is False and model.padding_strides() == (strides, levels)


@pytest.mark.parametrize('stride', [1, 2, 4, 8, 64])
def test_padding_mask_is_the_strided_image_mask(stride: int) -> None:
    """A map at stride s holds the image in its first ceil(h / s) rows: what a "same"-padded
    stride-s convolution of the image alone outputs."""
    valid_hw = torch.tensor([[67, 93], [80, 72], [1, 96]])
    image_mask = torch.ones(3, 96, 96, dtype=torch.bool)
    conv = nn.Conv2d(1, 1, 3, stride=stride, padding=1)
    mask = padding_mask(valid_hw, 96, 96, stride)
    for index, (height, width) in enumerate(valid_hw.tolist()):
        image_mask[index, :height, :width] = False
        alone = conv(torch.zeros(1, 1, height, width)).shape[-2:]
        valid = ((~mask[index, :, 0]).sum().item(), (~mask[index, 0, :]).sum().item())
        assert valid == tuple(alone)
    expected = image_mask[:, ::stride, ::stride]
    mask = padding_mask(valid_hw, expected.shape[1], expected.shape[2], stride)
    assert torch.equal(mask, expected)


def test_masked_group_norm_is_group_norm_of_the_image() -> None:
    norm = nn.GroupNorm(4, 16).double()
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    valid_hw = torch.tensor([[9, 11], [6, 7]])
    out = masked_group_norm(x, padding_mask(valid_hw, 9, 11, 1), norm)
    for index, (height, width) in enumerate(valid_hw.tolist()):
        expected: Tensor = norm(x[index : index + 1, :, :height, :width])
        torch.testing.assert_close(
            out[index : index + 1, :, :height, :width], expected, rtol=0, atol=1e-12
        )


class _MaskedForward(nn.Module):
    """The masked path as a function of tensors: images and each image's size."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor, valid_hw: Tensor) -> Tuple[Tensor, Tensor]:
        feats = self.detector.extract_feat(images, valid_hw)
        outputs = self.detector.forward_transformer(feats, None, valid_hw)
        return self.detector.bbox_head(
            outputs['hidden_states'], outputs['init_reference'], outputs['inter_references']
        )


@pytest.mark.slow
def test_masked_path_exports_with_symbolic_sizes() -> None:
    """torch.export traces the masked path with a symbolic batch, height and width (the
    image sizes are an input, no value is read back), and the program computes what eager does
    on another batch of other sizes."""
    from mmdet_deformdetr.deploy import use_reference_attention

    model = perturb_(build_tiny_model('two_stage'), skip=()).eval()
    use_reference_attention(model)
    model.padding_strides()  # the probe stays out of the traced forward
    module = _MaskedForward(model)
    dynamic = torch.export.Dim.DYNAMIC
    with torch.no_grad():
        exported = torch.export.export(
            module,
            (torch.randn(2, 3, 96, 80), torch.tensor([[96, 80], [70, 61]])),
            dynamic_shapes={
                'images': {0: dynamic, 2: dynamic, 3: dynamic},
                'valid_hw': {0: dynamic},
            },
            strict=False,
        )
        images = torch.randn(3, 3, 88, 104)
        valid_hw = torch.tensor([[88, 104], [67, 93], [80, 71]])
        for traced, eager in zip(exported.module()(images, valid_hw), module(images, valid_hw)):
            torch.testing.assert_close(traced, eager, rtol=0, atol=1e-5)


def test_bottleneck_padding_stays_finite() -> None:
    """Windows of padding only max-pool to 0 (not -inf, which a following 1x1 convolution of
    mixed-sign weights turns into NaN), and GroupNorm ignores whatever the padding holds."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 8, 1),
        nn.GroupNorm(2, 8),
        nn.Conv2d(8, 8, 3, padding=1),
    ).double()
    strides = {'net.0': 1, 'net.1': 1, 'net.3': 2, 'net.4': 2}
    images = torch.randn(2, 3, 21, 17, dtype=torch.float64)
    valid_hw = torch.tensor([[21, 17], [9, 7]])
    with torch.no_grad(), padding_kept_out(dict(net=net), valid_hw, strides):
        assert torch.isfinite(net[:3](images)).all()
        batch = net(images)
    assert torch.isfinite(batch).all()
    with torch.no_grad():
        alone = net(images[1:, :, :9, :7])
    torch.testing.assert_close(batch[1:, :, :5, :4], alone, rtol=0, atol=1e-12)
