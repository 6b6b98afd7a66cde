"""The FFN activation of the encoder and decoder layers, by the official code's names."""

from torch import Tensor, nn

from ...ops.linear import linear

_ACTIVATIONS = {'relu': nn.ReLU, 'gelu': nn.GELU}


def build_activation(name: str) -> nn.Module:
    """FFN activation by name: ``'relu'`` (the paper) or ``'gelu'``.

    The official code also accepts ``'glu'``, which halves the hidden width and so does not fit
    ``linear2``; it is rejected here rather than failing later with a shape error.
    """
    if name not in _ACTIVATIONS:
        raise ValueError(f'activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}')
    return _ACTIVATIONS[name]()


def ffn_hidden(query: Tensor, linear1: nn.Linear, activation: nn.Module) -> Tensor:
    """``activation(linear1(query))``; a ReLU is fused into the matmul where ``ops.linear`` runs
    oneDNN (CPU inference). ``(..., C)`` in, ``(..., feedforward_channels)`` out."""
    if isinstance(activation, nn.ReLU):
        return linear(query, linear1, relu=True)
    return activation(linear(query, linear1))
