"""``ops.linear``: oneDNN's fused linear (+ ReLU) at CPU inference, ``nn.Linear`` elsewhere."""

import pytest
import torch
from torch import nn

from mmdet_deformdetr.ops import linear as linear_module
from mmdet_deformdetr.ops.linear import linear

pytestmark = pytest.mark.skipif(
    not linear_module._ONEDNN, reason='torch built without oneDNN: only the plain path exists'
)


def _layer_and_input():
    torch.manual_seed(0)
    layer = nn.Linear(32, 48)
    x = torch.randn(2, 37, 32)
    return layer, x


@pytest.mark.parametrize('relu', [False, True])
def test_inference_path_matches_float64_linear(relu: bool) -> None:
    layer, x = _layer_and_input()
    want = nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double())
    if relu:
        want = want.relu()
    with torch.no_grad():
        got = linear(x, layer, relu=relu)
    assert got.dtype == torch.float32 and got.shape == (2, 37, 48)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_non_contiguous_input() -> None:
    layer, x = _layer_and_input()
    x = x.transpose(0, 1)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, layer), layer(x), rtol=1e-5, atol=1e-5)


def test_gradients_autocast_and_graphs_take_the_module(monkeypatch) -> None:
    layer, x = _layer_and_input()
    calls = []
    layer.register_forward_hook(lambda module, args, out: calls.append(out.dtype))
    out = linear(x, layer, relu=True)  # gradients recorded: the module, its autograd graph
    assert out.requires_grad and calls == [torch.float32]
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert linear(x, layer).dtype == torch.bfloat16  # autocast's rules
    assert calls == [torch.float32, torch.bfloat16]
    with torch.no_grad():
        linear(x, layer)  # the oneDNN path: the module's hooks do not run
        linear(x.double(), layer.double())  # float64: the module
    assert len(calls) == 3
