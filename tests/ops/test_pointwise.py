"""The CPU fast paths of MSDeformAttn's elementwise steps equal the plain expressions."""

import pytest
import torch

from mmdet_deformdetr.ops.pointwise import box_locations, point_locations, softmax_last_dim

SHAPE = (2, 7, 3, 4, 5)  # bs, nq, heads, levels, points


def _offsets(dtype=torch.float64):
    bs, nq, heads, levels, points = SHAPE
    return torch.randn(bs, nq, heads, levels, points, 2, dtype=dtype) * 3


def _assert_bitwise_with_equal_gradients(ours, ref, inputs):
    """Same values bit for bit; the gradients of every input agree to float64 rounding."""
    assert ours.shape == ref.shape and torch.equal(ours, ref)
    grad = torch.randn_like(ref)
    ours_grads = torch.autograd.grad(ours, inputs, grad)
    ref_grads = torch.autograd.grad(ref, inputs, grad)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize('n', [1, 12, 16, 33])
def test_softmax_matches_torch_values_and_gradients(n):
    torch.manual_seed(0)
    x = (torch.randn(3, 5, 8, n, dtype=torch.float64) * 10).requires_grad_()
    grad = torch.randn(3, 5, 8, n, dtype=torch.float64)
    ours = softmax_last_dim(x)
    (ours_grad,) = torch.autograd.grad(ours, x, grad)
    ref = x.softmax(-1)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-15)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(softmax_last_dim, (x[:1, :2].detach().requires_grad_(),))


def test_softmax_is_stable_for_large_logits_and_without_grad():
    x = torch.tensor([[1000.0, 1000.0, -1000.0], [-80.0, -90.0, -100.0]])
    with torch.no_grad():
        y = softmax_last_dim(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, x.softmax(-1), rtol=0, atol=1e-7)
    assert not y.requires_grad


def test_point_locations_equal_the_broadcast_expression_bitwise():
    torch.manual_seed(1)
    bs, nq, heads, levels, points = SHAPE
    offsets = _offsets().requires_grad_()
    reference = torch.rand(bs, nq, levels, 2, dtype=torch.float64, requires_grad=True)
    normaliser = torch.tensor([[40.0, 30.0], [20.0, 15.0], [10.0, 8.0], [5.0, 4.0]]).double()
    ours = point_locations(reference, offsets, normaliser)
    ref = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
    _assert_bitwise_with_equal_gradients(ours, ref, (reference, offsets))


def test_box_locations_equal_the_broadcast_expression_bitwise():
    torch.manual_seed(2)
    bs, nq, heads, levels, points = SHAPE
    offsets = _offsets().requires_grad_()
    boxes = torch.rand(bs, nq, levels, 4, dtype=torch.float64, requires_grad=True)
    ours = box_locations(boxes, offsets)
    ref = boxes[:, :, None, :, None, :2] + offsets / points * boxes[:, :, None, :, None, 2:] * 0.5
    _assert_bitwise_with_equal_gradients(ours, ref, (boxes, offsets))


def test_tracing_keeps_the_library_ops():
    """A traced graph (ONNX export traces) holds aten::softmax, not a Python autograd node."""
    graph = torch.jit.trace(softmax_last_dim, torch.randn(2, 3, 12)).graph
    kinds = {node.kind() for node in graph.nodes()}
    assert 'aten::softmax' in kinds and 'prim::PythonOp' not in kinds


def test_padding_check_sees_any_padded_key_and_stays_out_of_traces():
    from mmdet_deformdetr.ops.pointwise import padding_is_empty

    mask = torch.zeros(2, 9, dtype=torch.bool)
    assert padding_is_empty(mask)
    mask[1, 8] = True
    assert not padding_is_empty(mask)

    def mask_value(value, mask):
        return value if padding_is_empty(mask) else value.masked_fill(mask[..., None], 0.0)

    # traced with nothing padded, the graph still masks: the check stays out of traces
    traced = torch.jit.trace(mask_value, (torch.ones(2, 9, 4), torch.zeros(2, 9, dtype=torch.bool)))
    assert traced(torch.ones(2, 9, 4), mask)[1, 8].eq(0).all()


def test_torch_export_keeps_the_masking_and_the_softmax():
    """torch.export (the ONNX exporter's first step) must not evaluate the mask's data."""
    from mmdet_deformdetr.ops.pointwise import padding_is_empty

    class Masked(torch.nn.Module):
        def forward(self, value, mask, logits):
            if not padding_is_empty(mask):
                value = value.masked_fill(mask[..., None], 0.0)
            return value, softmax_last_dim(logits)

    args = (torch.ones(2, 9, 4), torch.zeros(2, 9, dtype=torch.bool), torch.randn(2, 9, 12))
    exported = torch.export.export(Masked(), args, strict=False)
    targets = {str(node.target) for node in exported.graph.nodes}
    assert any('masked_fill' in t for t in targets) and any('softmax' in t for t in targets)
    mask = args[1].clone()
    mask[1, 8] = True
    value, _ = exported.module()(args[0], mask, args[2])
    assert value[1, 8].eq(0).all() and value[0].eq(1).all()
