"""FLOP handles of the deformable attention against a hand count, and tools/analysis_tools/
get_flops.py on the tiny config over the photographs."""

import json

import pytest
import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.config import Config
from torch import nn

from mmdet_deformdetr.analysis import MACS_PER_SAMPLE, deform_attn_handles
from mmdet_deformdetr.models.layers import MSDeformAttn
from tests.helpers.tools import COCO_PHOTOS, TINY_CONFIG

SAMPLING_OPS = ('PythonOp.MSDeformAttnCPUFunction', 'grid_sampler')
LEVELS = [(4, 5), (2, 3)]  # 26 keys
EMBED, HEADS, POINTS, QUERIES = 8, 2, 3, 7


class _Attend(nn.Module):
    def __init__(self, impl: str) -> None:
        super().__init__()
        self.attn = MSDeformAttn(
            embed_dims=EMBED,
            num_heads=HEADS,
            num_levels=len(LEVELS),
            num_points=POINTS,
            dropout=0.0,
            impl=impl,
        )

    def forward(self, query, value, reference):
        return self.attn(query, reference, value=value, spatial_shapes=torch.tensor(LEVELS))


@pytest.mark.parametrize('impl', ['cpu', 'pytorch'])
def test_attention_handle_equals_hand_count(impl):
    """Fused kernel and grid_sample reference both count 5 multiply-adds per sampled value and
    channel (4 bilinear + 1 weight); the four projections as linear layers."""
    generator = torch.Generator().manual_seed(0)
    num_keys = sum(h * w for h, w in LEVELS)
    inputs = (
        torch.randn(1, QUERIES, EMBED, generator=generator),
        torch.randn(1, num_keys, EMBED, generator=generator),
        torch.rand(1, QUERIES, len(LEVELS), 2, generator=generator),
    )
    analyzer = FlopAnalyzer(_Attend(impl).eval(), inputs)
    analyzer.set_op_handle(**deform_attn_handles())
    analyzer.unsupported_ops_warnings(False).tracer_warnings('none')
    by_operator = analyzer.by_operator()
    head_dims = EMBED // HEADS
    sampling = QUERIES * HEADS * len(LEVELS) * POINTS * head_dims * 5  # = 1680
    linear = (
        QUERIES * EMBED * HEADS * len(LEVELS) * POINTS * 2  # sampling_offsets
        + QUERIES * EMBED * HEADS * len(LEVELS) * POINTS  # attention_weights
        + num_keys * EMBED * EMBED
        + QUERIES * EMBED * EMBED
    )  # value / output proj
    assert MACS_PER_SAMPLE == 5
    assert sum(by_operator.get(op, 0) for op in SAMPLING_OPS) == sampling == 1680
    assert by_operator['linear'] == linear
    assert analyzer.total() == sampling + linear


@pytest.mark.slow
def test_get_flops_tool_terms_add_up_and_count_the_sampling(our_get_flops):
    output, report = our_get_flops
    terms = report['terms']
    parts = ('backbone', 'input projection', 'encoder', 'decoder', 'transformer, other', 'head')
    assert sum(terms[part] for part in parts) == pytest.approx(terms['total'], rel=1e-5)
    assert 0 < terms['detector, other'] < 1e-5 * terms['total']  # the padding masks' resize
    # hand count of the sampling: every token of the 2 test images (mean of their token counts)
    # samples L*K points per head in the one encoder layer; 10 queries in the one decoder layer
    cfg = Config.fromfile(str(TINY_CONFIG))
    transformer = cfg.model.transformer
    per_query = MACS_PER_SAMPLE * transformer.embed_dims * 4 * transformer.enc_num_points
    images = json.loads((COCO_PHOTOS / 'annotations' / 'instances.json').read_text())['images']
    tokens = []
    for image in images[:2]:
        scale = min(
            160 / max(image['width'], image['height']), 96 / min(image['width'], image['height'])
        )
        height, width = int(image['height'] * scale + 0.5), int(image['width'] * scale + 0.5)
        tokens.append(sum(-(-height // stride) * -(-width // stride) for stride in (8, 16, 32, 64)))
    expected = per_query * sum(tokens) / len(tokens)
    assert terms['encoder sampling'] * 1e9 == pytest.approx(expected, rel=1e-9)
    assert terms['decoder sampling'] * 1e9 == pytest.approx(
        per_query * cfg.model.num_queries, rel=1e-9
    )
    assert report['mmdet_get_flops_gflops'] == pytest.approx(
        terms['total'] - (terms['encoder sampling'] + terms['decoder sampling']) / 5, rel=1e-9
    )
    assert report['params'] > 1e7  # ResNet-18 and the tiny transformer: 11.4 M
    assert f'params: {report["params"] / 1e6:.2f} M' in output
