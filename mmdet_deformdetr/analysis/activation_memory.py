"""Training memory of a model, counted from what the autograd graph holds: ``ActivationMeter``.

A training step holds, at the start of its backward pass (where the peak usually is): the
weights, the optimizer state (AdamW: two tensors per trained parameter) and the activations the
forward pass saved for the backward one; the gradients are allocated while those activations are
freed. This module counts the activations as the graph holds them, on any device:

- every tensor the autograd graph saves for backward goes through
  ``torch.autograd.graph.saved_tensors_hooks``; the meter records its storage (a view shares its
  base's storage: counted once) and keeps it alive until the meter is discarded, so that storage
  identities cannot be reused and the count is exact;
- storages of parameters and buffers are not activations and are left out;
- with activation checkpointing (``with_cp``) the tensors saved inside a checkpointed layer are
  dropped and recomputed in the backward pass, but the layer's inputs are kept: the meter records
  the tensor arguments of the modules in ``checkpointed`` through forward pre-hooks (and the
  saved tensors of one layer come back, one layer at a time, during the backward pass:
  ``per_module_bytes`` gives them).

The count is the bytes of the saved tensors, as ``torch.cuda.memory_allocated`` would see them:
the same operators save the same tensors on a GPU (the deformable attention's CPU kernel saves
exactly what mmcv's CUDA kernel saves: value, locations, weights and the two shape tensors).
What it leaves out: the transient buffers of single operators (cuDNN workspaces, the gradient
being computed), the caching allocator's reserve, and the CUDA context.
"""

from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn


def storage_key(tensor: torch.Tensor) -> int:
    """Identity of ``tensor``'s storage (shared by its views)."""
    return tensor.untyped_storage()._cdata


class ActivationMeter:
    """Bytes of the distinct storages saved for backward while the meter is active.

    Args:
        model: its parameters and buffers are not counted.
        checkpointed: modules run under activation checkpointing; their tensor inputs count.
        per_module: modules whose own saved bytes are recorded in ``per_module_bytes``
            (the held bytes after the module minus before it).

    Example::

        with ActivationMeter(model) as meter:
            losses = model.loss(inputs, data_samples)
        print(meter.held_bytes)
    """

    def __init__(
        self,
        model: nn.Module,
        checkpointed: Iterable[nn.Module] = (),
        per_module: Iterable[nn.Module] = (),
    ) -> None:
        self._excluded = {
            storage_key(tensor) for tensor in list(model.parameters()) + list(model.buffers())
        }
        self._held: Dict[int, Tuple[Any, int]] = {}
        self._checkpointed = list(checkpointed)
        self._per_module = list(per_module)
        self.per_module_bytes: List[int] = []
        self._handles: List[Any] = []
        self._context: Optional[Any] = None

    @property
    def held_bytes(self) -> int:
        return sum(nbytes for _, nbytes in self._held.values())

    def _record(self, tensor: torch.Tensor) -> None:
        key = storage_key(tensor)
        if key not in self._excluded and key not in self._held:
            storage = tensor.untyped_storage()
            self._held[key] = (storage, storage.nbytes())

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self._record(tensor)
        return tensor

    def _record_inputs(self, module: nn.Module, args: tuple) -> None:
        if module.training and torch.is_grad_enabled():
            for arg in args:
                if isinstance(arg, torch.Tensor):
                    self._record(arg)

    def __enter__(self) -> 'ActivationMeter':
        for module in self._checkpointed:
            self._handles.append(module.register_forward_pre_hook(self._record_inputs))
        starts: Dict[int, int] = {}
        for module in self._per_module:
            self._handles.append(
                module.register_forward_pre_hook(
                    lambda module, args: starts.__setitem__(id(module), self.held_bytes)
                )
            )
            self._handles.append(
                module.register_forward_hook(
                    lambda module, args, output: self.per_module_bytes.append(
                        self.held_bytes - starts[id(module)]
                    )
                )
            )
        self._context = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda x: x)
        self._context.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._context.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def release(self) -> None:
        """Drop the references that keep the counted storages alive."""
        self._held.clear()


def training_state_bytes(model: nn.Module, optimizer_tensors_per_param: int = 2) -> Dict[str, int]:
    """Bytes of the weights (parameters and buffers, shared storages once), of the gradients of
    the trained parameters, and of the optimizer state (``optimizer_tensors_per_param`` tensors
    per trained parameter: 2 for AdamW)."""
    weights = {storage_key(t): t.untyped_storage().nbytes() for t in model.parameters()}
    weights.update({storage_key(t): t.untyped_storage().nbytes() for t in model.buffers()})
    trained = {
        storage_key(p): p.numel() * p.element_size() for p in model.parameters() if p.requires_grad
    }
    gradients = sum(trained.values())
    return dict(
        weights=sum(weights.values()),
        gradients=gradients,
        optimizer=optimizer_tensors_per_param * gradients,
    )
