"""Eval-time fusion: an inference copy of the backbone and neck, rebuilt when the weights change.

In eval mode without gradients (``test_step``, ``val_step``, ``predict`` under ``torch.no_grad``)
``DeformDETR.extract_feat`` runs a copy of its backbone and neck instead of the modules
themselves. The copy has

* every frozen BatchNorm that directly follows a convolution folded into it (mmcv's
  ``fuse_conv_bn``; only for mmdet's ``ResNet`` family, whose children are listed in the order
  conv -> norm, which mmcv's pairing by child order relies on: a backbone with a module between a
  convolution and its norm would be fused wrongly, so other backbones are copied unfused);
* on the CPU, its convolution weights in channels-last memory format, so that oneDNN runs
  channels-last convolutions and max-pooling without reordering, and the transformer's flattening
  of every level to ``(bs, H*W, C)`` is a view (no copy).

Every convolution stays an ``nn.Conv2d`` (BatchNorm layers become ``nn.Identity``, as mmcv does),
so forward hooks registered on the original modules are copied with them. The copy is held
outside the module tree: ``state_dict()``, ``named_parameters()``, ``modules()``, saving and
training see only the original modules. It is rebuilt when any parameter or buffer of the
backbone or neck changes: the key is each tensor's storage address and version counter (every
in-place update, an optimizer step or ``load_state_dict``, bumps the counter; ``.to()`` and
``load_state_dict(assign=True)`` change the address), plus the module ids and their hooks.
"""

import copy
from typing import Hashable, Optional, Sequence, Tuple

import torch
from torch import nn


def _staleness_key(modules: Sequence[nn.Module]) -> Tuple[Hashable, ...]:
    """What must be unchanged for a built copy to compute what ``modules`` compute."""
    key = []
    for module in modules:
        for sub in module.modules():
            key.append(
                (
                    id(sub),
                    sub.training,
                    tuple(sub._forward_pre_hooks),
                    tuple(sub._forward_hooks),
                )
            )
        for tensor in (*module.parameters(), *module.buffers()):
            key.append((tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device))
    return tuple(key)


def _foldable(backbone: nn.Module) -> bool:
    """Whether mmcv's ``fuse_conv_bn`` pairs this backbone's convolutions and norms correctly."""
    from mmdet.models.backbones import ResNet

    return isinstance(backbone, ResNet)


def build_inference_copy(
    backbone: nn.Module, neck: nn.Module, owner: Optional[nn.Module] = None
) -> nn.ModuleList:
    """``[backbone, neck]`` copied, BatchNorm folded (mmdet ResNets), channels-last, frozen.

    Args:
        backbone, neck: the modules in eval mode (BatchNorm on its running statistics).
        owner: the module that holds them (the detector): hooks of the originals that are bound
            methods of it keep pointing to it instead of dragging a copy of it along.
    """
    from mmcv.cnn import fuse_conv_bn

    memo = {} if owner is None else {id(owner): owner}
    # ordinary tensors even when called under torch.inference_mode (the copy outlives the call)
    with torch.inference_mode(False), torch.no_grad():
        fused_backbone = copy.deepcopy(backbone, memo)
        fused_neck = copy.deepcopy(neck, memo)
        if _foldable(fused_backbone):
            fuse_conv_bn(fused_backbone)
        pair = nn.ModuleList([fused_backbone, fused_neck]).eval()
        pair.requires_grad_(False)
        if _on_cpu(backbone):
            pair.to(memory_format=torch.channels_last)
    return pair


def _on_cpu(module: nn.Module) -> bool:
    return all(param.device.type == 'cpu' for param in module.parameters())


class EvalFusionCache:
    """The inference copy of a backbone and neck, with the key it was built for.

    Held as a plain attribute (not an ``nn.Module``), so it stays out of the module tree.
    """

    def __init__(self) -> None:
        self._pair: Optional[nn.ModuleList] = None
        self._key: Optional[Tuple[Hashable, ...]] = None
        self.builds = 0  # how many times the copy was (re)built, for tests and diagnostics

    def get(self, backbone: nn.Module, neck: nn.Module, owner: nn.Module) -> nn.ModuleList:
        """The copy of ``[backbone, neck]``, rebuilt first when they changed since it was built."""
        key = _staleness_key((backbone, neck))
        if self._pair is None or key != self._key:
            self._pair = None  # free the stale copy before building the next one
            self._pair = build_inference_copy(backbone, neck, owner)
            self._key = key
            self.builds += 1
        return self._pair

    def clear(self) -> None:
        self._pair, self._key = None, None

    def __deepcopy__(self, memo: dict) -> 'EvalFusionCache':
        return EvalFusionCache()  # a copied detector has other tensors: build its own

    def __getstate__(self) -> dict:
        return {'_pair': None, '_key': None, 'builds': 0}  # never pickled with the model
