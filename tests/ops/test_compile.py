"""The CPU kernel as a ``torch.library`` op: torch.compile and torch.export capture it whole."""

import pytest
import torch

from mmdet_deformdetr.models.layers import MSDeformAttn
from mmdet_deformdetr.ops import multi_scale_deformable_attn as msda
from mmdet_deformdetr.ops.cpu_kernel import ms_deform_attn_cpu_op

SHAPES = [(6, 8), (3, 4)]


def _inputs(dtype: torch.dtype = torch.float64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    num_keys = sum(h * w for h, w in SHAPES)
    value = torch.randn(2, num_keys, 2, 4, generator=generator, dtype=dtype)
    locations = torch.rand(2, 5, 2, len(SHAPES), 3, 2, generator=generator, dtype=dtype) * 1.2 - 0.1
    weights = torch.rand(2, 5, 2, len(SHAPES), 3, generator=generator, dtype=dtype)
    shapes = torch.tensor(SHAPES)
    starts = torch.tensor([0, SHAPES[0][0] * SHAPES[0][1]])
    return value, shapes, starts, locations, weights


def test_library_op_matches_the_eager_kernel_and_its_gradients() -> None:
    value, shapes, starts, locations, weights = _inputs()
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    got = ms_deform_attn_cpu_op(leaves[0], shapes, starts, leaves[1], leaves[2])
    got.square().sum().backward()
    want_leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    want = msda(want_leaves[0], shapes, starts, want_leaves[1], want_leaves[2], impl='pytorch')
    want.square().sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for got_leaf, want_leaf in zip(leaves, want_leaves):
        torch.testing.assert_close(got_leaf.grad, want_leaf.grad, rtol=1e-10, atol=1e-10)


def test_library_op_passes_torch_opcheck() -> None:
    """Fake kernel, schema and autograd registration agree with the real kernel."""
    value, shapes, starts, locations, weights = _inputs()
    args = (value.requires_grad_(), shapes, starts, locations.requires_grad_(), weights)
    torch.library.opcheck(ms_deform_attn_cpu_op, args)


def _attention_module() -> MSDeformAttn:
    torch.manual_seed(0)
    return MSDeformAttn(embed_dims=16, num_heads=2, num_levels=2, num_points=3, impl='cpu').eval()


def _module_inputs():
    generator = torch.Generator().manual_seed(1)
    num_keys = sum(h * w for h, w in SHAPES)
    query = torch.randn(1, 7, 16, generator=generator)
    reference_points = torch.rand(1, 7, 2, 2, generator=generator)
    value = torch.randn(1, num_keys, 16, generator=generator)
    return query, reference_points, value


def test_attention_module_compiles_without_graph_breaks() -> None:
    module = _attention_module()
    query, reference_points, value = _module_inputs()

    def forward(query, reference_points, value):
        return module(query, reference_points, value, SHAPES)

    explanation = torch._dynamo.explain(forward)(query, reference_points, value)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_compiled_attention_module_equals_eager() -> None:
    module = _attention_module()
    query, reference_points, value = _module_inputs()
    compiled = torch.compile(lambda q, r, v: module(q, r, v, SHAPES), backend='eager')
    torch.testing.assert_close(
        compiled(query, reference_points, value), module(query, reference_points, value, SHAPES)
    )


def test_export_keeps_the_library_op() -> None:
    module = _attention_module()
    query, reference_points, value = _module_inputs()

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = module

        def forward(self, query, reference_points, value):
            return self.attention(query, reference_points, value, SHAPES)

    exported = torch.export.export(Wrapped(), (query, reference_points, value))
    graphs = ' '.join(  # the op sits in the autocast-disabled region's subgraph
        str(sub.graph) for sub in exported.graph_module.modules() if hasattr(sub, 'graph')
    )
    assert 'mmdet_deformdetr.ms_deform_attn_cpu' in graphs
    assert 'grid_sampler' not in graphs
    torch.testing.assert_close(
        exported.module()(query, reference_points, value),
        module(query, reference_points, value, SHAPES),
    )


@pytest.mark.slow
def test_detector_forward_compiles_without_graph_breaks() -> None:
    """The whole tiny detector (backbone, neck, transformer with our kernel, head) is one graph."""
    from mmengine.registry import init_default_scope

    from tests.helpers.models import build_tiny_model

    init_default_scope('mmdet')
    model = build_tiny_model('plain').eval()
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    explanation = torch._dynamo.explain(model._forward)(images)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    graphs = ' '.join(str(graph.graph) for graph in explanation.graphs)
    assert 'ms_deform_attn_cpu' in graphs
