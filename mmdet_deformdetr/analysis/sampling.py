"""Capture where every deformable attention of a model samples, without changing the model.

:func:`capture_sampling` is a context manager: while it is open, each ``MSDeformAttn`` call of the
model records the sampling locations and attention weights that the layer computed and handed to
``multi_scale_deformable_attn``, with the reference points it was given. It wraps the op function
that ``msdeform_attn.py`` calls (restored on exit) and tells calls apart with forward pre-hooks
on the attention modules (removed on exit); the arguments are recorded as they are, so what is
drawn is exactly what the kernel read.
"""

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..models.layers import MSDeformAttn
from ..models.layers import msdeform_attn as msdeform_attn_module
from ..ops import level_shapes


@dataclass
class SamplingRecord:
    """One call of one attention layer.

    Attributes:
        reference_points: ``(bs, nq, L, 2|4)`` as given to the layer (level-padded
            coordinates; boxes ``(cx, cy, w, h)`` with refinement / two-stage).
        sampling_locations: ``(bs, nq, M, L, K, 2)`` normalised ``(x, y)`` of each level's map
            (``(0, 0)`` top-left corner, ``(1, 1)`` bottom-right corner).
        attention_weights: ``(bs, nq, M, L, K)``.
        level_shapes: ``(H_l, W_l)`` of the sampled levels.
    """

    reference_points: Tensor
    sampling_locations: Tensor
    attention_weights: Tensor
    level_shapes: List[Tuple[int, int]]


@contextlib.contextmanager
def capture_sampling(model: nn.Module) -> Iterator[Dict[str, List[SamplingRecord]]]:
    """Record every deformable-attention call of ``model`` while the context is open.

    Yields:
        ``{module name: [SamplingRecord, ...]}`` (one record per call; the single-scale ablation
        calls its encoder attention once per level), filled as the model runs.
    """
    records: Dict[str, List[SamplingRecord]] = {}
    current: List[Tuple[str, Optional[Tensor]]] = []
    original = msdeform_attn_module.multi_scale_deformable_attn

    def recording_op(
        value: Tensor,
        spatial_shapes,
        level_start_index: Tensor,
        sampling_locations: Tensor,
        attention_weights: Tensor,
        *args,
        **kwargs,
    ) -> Tensor:
        if current:
            name, reference = current[-1]
            records.setdefault(name, []).append(
                SamplingRecord(
                    reference_points=reference.detach().clone(),
                    sampling_locations=sampling_locations.detach().clone(),
                    attention_weights=attention_weights.detach().clone(),
                    level_shapes=[(int(h), int(w)) for h, w in level_shapes(spatial_shapes)],
                )
            )
        return original(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            *args,
            **kwargs,
        )

    def enter(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            reference = kwargs.get('reference_points', args[1] if len(args) > 1 else None)
            current.append((name, reference))

        return hook

    def leave(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
        current.pop()

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, MSDeformAttn):
            handles.append(module.register_forward_pre_hook(enter(name), with_kwargs=True))
            handles.append(module.register_forward_hook(leave, with_kwargs=True))
    msdeform_attn_module.multi_scale_deformable_attn = recording_op
    try:
        with torch.no_grad():
            yield records
    finally:
        msdeform_attn_module.multi_scale_deformable_attn = original
        for handle in handles:
            handle.remove()
