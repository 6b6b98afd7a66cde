"""A freshly built model starts where the reference implementations start (official code, mmdet).

Every parameter outside the backbone of every shipped config is matched by exactly one rule of
``RULES`` (a parameter no rule knows fails the test, so a new module must state its
initialisation here). A rule either gives the exact constant the reference sets, or the
distribution the reference draws from, checked by range and moments:

=====================================================  =========================================
parameter                                              reference initialisation
=====================================================  =========================================
``*.sampling_offsets.weight``                          0
``*.sampling_offsets.bias``                            ring: head m points in direction
                                                       2*pi*m/M, point k at max-norm distance k+1
``*.attention_weights.{weight,bias}``                  0
``*.value_proj`` / ``*.output_proj`` weight            Xavier uniform; bias 0
decoder ``self_attn.in_proj_weight`` / ``out_proj``    Xavier uniform; biases 0
``linear1`` / ``linear2`` weight                       Xavier uniform
``linear1`` / ``linear2`` bias                         nn.Linear default U(+-1/sqrt(fan_in))
every GroupNorm / LayerNorm / BatchNorm outside the    weight 1, bias 0
backbone
``transformer.level_embed``, ``query_embed``           N(0, 1)
``transformer.reference_points``                       Xavier uniform, bias 0
``transformer.enc_output`` / ``pos_trans`` weight      Xavier uniform; bias nn.Linear default
neck convs (input projection, FPN, BiFPN)              Xavier uniform, bias 0
``cls_branches.*.weight``                              nn.Linear default (kaiming a=sqrt(5))
``cls_branches.*.bias``                                -log((1 - 0.01) / 0.01) (prior 0.01)
``reg_branches.*.layers.{0,1}``                        nn.Linear default
``reg_branches.*.layers.2.weight``                     0
``reg_branches.*.layers.2.bias``                       0, then (w, h) = -2 on branch 0 for plain
                                                       and refine; 0 everywhere for two-stage
=====================================================  =========================================

(Facts of the official ``DeformableTransformer._reset_parameters``,
``MSDeformAttn._reset_parameters`` and ``DeformableDETR.__init__``; mmdet 3.3 sets the same.)
"""

import math
import re
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config

from tests.helpers.models import REPO_ROOT, init_weights_quietly
from tests.helpers.tiers import in_fast_tier_configs, slow_except

CONFIGS = sorted(p for p in (REPO_ROOT / 'configs').rglob('*.py'))
# the paper's three variants, by their shipped configs
PAPER = {
    'plain': 'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
    'refine': 'deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py',
    'two_stage': 'deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
}
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


def _fans(shape: torch.Size) -> Tuple[int, int]:
    """fan_in, fan_out as torch's init functions compute them."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _check_uniform(name: str, tensor: torch.Tensor, bound: float) -> None:
    values = tensor.detach().double().flatten()
    count = values.numel()
    assert values.abs().max() <= bound * (1 + 1e-6), f'{name}: outside U(-{bound:.4g}, {bound:.4g})'
    expected_std = bound / math.sqrt(3)
    # sampling error of the moments: about 1/sqrt(n) of the std; 6 sigma leaves no flaky runs
    assert abs(values.mean()) <= 6 * expected_std / math.sqrt(count), f'{name}: mean'
    assert abs(values.std() / expected_std - 1) <= 6 / math.sqrt(count) + 0.01, (
        f'{name}: std {values.std():.4g}, U(-b, b) has {expected_std:.4g}'
    )
    if count >= 256:  # the largest of n uniform draws is within b * 20 / n of b (p ~ e^-20)
        assert values.abs().max() >= bound * (1 - 20 / count), f'{name}: not spread to {bound}'


def xavier_uniform(name: str, tensor: torch.Tensor, model: torch.nn.Module) -> None:
    fan_in, fan_out = _fans(tensor.shape)
    _check_uniform(name, tensor, math.sqrt(6 / (fan_in + fan_out)))


def linear_default(name: str, tensor: torch.Tensor, model: torch.nn.Module) -> None:
    """nn.Linear's own init: weight kaiming_uniform(a=sqrt(5)) and bias both U(+-1/sqrt(fan_in))."""
    weight = model.get_parameter(name.rsplit('.', 1)[0] + '.weight')
    _check_uniform(name, tensor, 1 / math.sqrt(weight.shape[1]))


def standard_normal(name: str, tensor: torch.Tensor, model: torch.nn.Module) -> None:
    values = tensor.detach().double().flatten()
    count = values.numel()
    assert abs(values.mean()) <= 6 / math.sqrt(count), f'{name}: mean {values.mean():.4g}'
    assert abs(values.std() - 1) <= 6 / math.sqrt(2 * count), f'{name}: std {values.std():.4g}'
    if count >= 1000:  # N(0, 1) puts 4.55% of its draws beyond 2; a uniform of std 1 puts none
        beyond = (values.abs() > 2).double().mean().item()
        assert 0.025 <= beyond <= 0.07, f'{name}: {beyond:.1%} beyond 2 sigma, N(0, 1) has 4.55%'


def constant(value: float) -> Callable:
    def check(name: str, tensor: torch.Tensor, model: torch.nn.Module) -> None:
        assert torch.equal(tensor, torch.full_like(tensor, value)), f'{name}: not all {value}'

    check.__name__ = f'constant({value})'
    return check


def official_ring(num_heads: int, num_levels: int, num_points: int) -> torch.Tensor:
    """The official ``MSDeformAttn`` offset bias, computed as the official code does (float32)."""
    thetas = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = (
        (grid / grid.abs().max(-1, keepdim=True)[0])
        .view(num_heads, 1, 1, 2)
        .repeat(1, num_levels, num_points, 1)
    )
    for point in range(num_points):
        grid[:, :, point, :] *= point + 1
    return grid.view(-1)


def sampling_ring(name: str, tensor: torch.Tensor, model: torch.nn.Module) -> None:
    attention = model.get_submodule(name.rsplit('.', 2)[0])
    expected = official_ring(attention.num_heads, attention.num_levels, attention.num_points)
    assert torch.equal(tensor.detach(), expected), f'{name}: not the official ring'


def size_bias(name: str, tensor: torch.Tensor, model: torch.nn.Module) -> None:
    """Last box layer bias: 0, except (w, h) = -2 on branch 0 of plain and refine models."""
    branch = int(re.search(r'reg_branches\.(\d+)\.', name).group(1))
    size = -2.0 if branch == 0 and not model.as_two_stage else 0.0
    expected = torch.tensor([0.0, 0.0, size, size], dtype=tensor.dtype)
    assert torch.equal(tensor.detach(), expected), f'{name}: {tensor.tolist()} != {expected}'


_DEFORM = r'transformer\.(encoder|decoder)\.layers\.\d+\.(self_attn|cross_attn)\.'
_NORM_TYPES = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.modules.batchnorm._BatchNorm)
#: (pattern, check) in the order tried; the first match decides
RULES: List[Tuple[str, Callable]] = [
    (_DEFORM + r'sampling_offsets\.weight$', constant(0.0)),
    (_DEFORM + r'sampling_offsets\.bias$', sampling_ring),
    (_DEFORM + r'attention_weights\.(weight|bias)$', constant(0.0)),
    (_DEFORM + r'(value_proj|output_proj)\.weight$', xavier_uniform),
    (_DEFORM + r'(value_proj|output_proj)\.bias$', constant(0.0)),
    (
        r'transformer\.decoder\.layers\.\d+\.self_attn\.(in_proj_weight|out_proj\.weight)$',
        xavier_uniform,
    ),
    (
        r'transformer\.decoder\.layers\.\d+\.self_attn\.(in_proj_bias|out_proj\.bias)$',
        constant(0.0),
    ),
    (r'transformer\.(encoder|decoder)\.layers\.\d+\.linear[12]\.weight$', xavier_uniform),
    (r'transformer\.(encoder|decoder)\.layers\.\d+\.linear[12]\.bias$', linear_default),
    (r'transformer\.(level_embed|query_embed\.weight)$', standard_normal),
    (r'transformer\.reference_points\.weight$', xavier_uniform),
    (r'transformer\.reference_points\.bias$', constant(0.0)),
    (r'transformer\.(enc_output|pos_trans)\.weight$', xavier_uniform),
    (r'transformer\.(enc_output|pos_trans)\.bias$', linear_default),
    (r'neck\..*\.weight$', xavier_uniform),  # 1x1, 3x3 and separable convs (norms: above)
    (r'neck\..*\.bias$', constant(0.0)),
    (r'neck\..*\.fusion_weights$', constant(1.0)),  # BiFPN: a plain average at the start
    (r'bbox_head\.cls_branches\.\d+\.weight$', linear_default),
    (r'bbox_head\.cls_branches\.\d+\.bias$', constant(PRIOR_BIAS)),
    (r'bbox_head\.reg_branches\.\d+\.layers\.[01]\.(weight|bias)$', linear_default),
    (r'bbox_head\.reg_branches\.\d+\.layers\.2\.weight$', constant(0.0)),
    (r'bbox_head\.reg_branches\.\d+\.layers\.2\.bias$', size_bias),
]


def build_initialised(config: Path, overrides: Optional[dict] = None) -> torch.nn.Module:
    """The config's model as the Runner starts it: built, then ``init_weights()`` (no download)."""
    cfg = Config.fromfile(str(config))
    cfg.model.backbone.init_cfg = None
    if overrides:
        cfg.merge_from_dict(dict(model=overrides))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    init_weights_quietly(model)
    return model


def _rule_of(name: str, model: torch.nn.Module) -> Callable:
    owner = model.get_submodule(name.rsplit('.', 1)[0])
    if isinstance(owner, _NORM_TYPES):  # GroupNorm / LayerNorm / BatchNorm anywhere: 1 and 0
        return constant(1.0) if name.endswith('.weight') else constant(0.0)
    for pattern, check in RULES:
        if re.match(pattern, name):
            return check
    raise AssertionError(f'no initialisation rule for {name}: add the reference init to RULES')


@pytest.mark.parametrize(
    'config', slow_except(CONFIGS, in_fast_tier_configs), ids=lambda path: path.stem
)
def test_every_parameter_starts_as_the_reference(config: Path) -> None:
    model = build_initialised(config)
    checked = 0
    for name, param in model.named_parameters():  # shared branches are listed once
        if name.startswith('backbone.'):
            continue
        _rule_of(name, model)(name, param, model)
        checked += 1
    assert checked > 0


@pytest.mark.parametrize(
    'variant', slow_except(list(PAPER), lambda variant: variant == 'two_stage')
)
def test_size_bias_and_cloned_branches(variant: str) -> None:
    """The issue-#9 bug: refine must set -2 on its FIRST branch only; clones start identical."""
    model = build_initialised(REPO_ROOT / 'configs' / PAPER[variant])
    head = model.bbox_head
    sizes = [branch.layers[-1].bias[2:].tolist() for branch in head.reg_branches]
    expected = {
        'plain': [[-2.0, -2.0]] * 6,
        'refine': [[-2.0, -2.0]] + [[0.0, 0.0]] * 5,
        'two_stage': [[0.0, 0.0]] * 7,
    }[variant]
    assert sizes == expected
    distinct = len({id(branch) for branch in head.reg_branches})
    assert distinct == {'plain': 1, 'refine': 6, 'two_stage': 7}[variant]
    first_cls, first_reg = head.cls_branches[0].state_dict(), head.reg_branches[0].state_dict()
    for cls_branch, reg_branch in zip(head.cls_branches, head.reg_branches):
        assert all(
            torch.equal(value, first_cls[key]) for key, value in cls_branch.state_dict().items()
        )
        for key, value in reg_branch.state_dict().items():
            if key != 'layers.2.bias':
                assert torch.equal(value, first_reg[key]), key


def test_refine_initial_boxes_do_not_shrink_layer_after_layer() -> None:
    """At init every refine layer's box delta is zero except the first layer's size logit, so the
    references of all six layers are boxes of sigmoid(-2) ~ 0.12 of the image (with -2 on every
    branch they would shrink to 0.018, 0.0025, ...)."""
    model = build_initialised(REPO_ROOT / 'configs' / PAPER['refine']).eval()
    inputs = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        outputs = model.forward_transformer(model.extract_feat(inputs), None)
        _, all_bbox_preds = model.bbox_head(
            outputs['hidden_states'], outputs['init_reference'], outputs['inter_references']
        )
    initial_size = 1 / (1 + math.exp(2))
    for sizes in (outputs['inter_references'][..., 2:], all_bbox_preds[..., 2:]):
        assert torch.allclose(sizes, torch.full_like(sizes, initial_size), atol=1e-6)
