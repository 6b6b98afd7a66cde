"""``linear``: ``nn.Linear`` (optionally followed by ReLU) through oneDNN at inference on the CPU.

PyTorch's CPU ``F.linear`` on a ``(bs, n, C)`` input runs ``addmm``: it first copies the bias into
every row of the output, then multiplies with ``beta=1``, and a ReLU after it is one more pass
over the output. oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``, the kernel that
``torch.compile``'s CPU backend emits for linear layers) adds the bias and applies the ReLU while
writing the output. Both compute the same products in float32; results agree to float rounding.

Used only where nothing else is affected: CPU float32 tensors, no gradient recorded, no autocast
(whose bf16 rules only ``F.linear`` follows), no graph being traced, exported or compiled, and a
torch built with oneDNN. Everywhere else it is ``F.linear`` (and ``relu``), so training,
gradients, exports and autocast see exactly the ops they saw before.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ms_deform_attn import capturing_graph


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_linear_pointwise')


_ONEDNN = _onednn_available()


def _use_onednn(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    return (
        _ONEDNN
        and x.device.type == 'cpu'
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled('cpu')
        and not capturing_graph()
        and not torch.compiler.is_compiling()
    )


def linear(x: Tensor, layer: nn.Linear, relu: bool = False) -> Tensor:
    """``layer(x)``, then ``relu`` when asked.

    Args:
        x: ``(..., in_features)``.
        layer: the ``nn.Linear`` whose weight ``(out_features, in_features)`` and bias apply.
        relu: apply ReLU to the result (fused into the matmul on the oneDNN path).

    Returns:
        ``(..., out_features)``.
    """
    if _use_onednn(x, layer.weight, layer.bias):
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), layer.weight, layer.bias, 'relu' if relu else 'none', [], ''
        )
    output = layer(x)
    return F.relu(output) if relu else output
