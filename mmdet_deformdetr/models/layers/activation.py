"""The FFN activation of the encoder and decoder layers, by the official code's names."""

from torch import nn

_ACTIVATIONS = {'relu': nn.ReLU, 'gelu': nn.GELU}


def build_activation(name: str) -> nn.Module:
    """FFN activation by name: ``'relu'`` (the paper) or ``'gelu'``.

    The official code also accepts ``'glu'``, which halves the hidden width and so does not fit
    ``linear2``; it is rejected here rather than failing later with a shape error.
    """
    if name not in _ACTIVATIONS:
        raise ValueError(f'activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}')
    return _ACTIVATIONS[name]()
