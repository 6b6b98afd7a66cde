"""The backbone, neck and feed-forward settings of a checkpoint, read from its weights, for the
``model = dict(...)`` override that :mod:`.mismatch` suggests.

The variant facts (:mod:`.variant`) say what the transformer and head are; a checkpoint of
another size also has another backbone and neck, and an override without them does not load
(a half-width ResNet-18 into the R-50 config). From the weights alone, for the backbone and neck
that our configs use:

- mmdet ``ResNet``: blocks per stage and whether they have a ``conv3`` (Bottleneck) -> ``depth``;
  ``layer1.0.conv1`` -> ``base_channels``; ``conv1`` -> ``stem_channels``; the stages whose
  output width the neck reads -> ``out_indices``;
- mmdet ``ChannelMapper``: its convolutions -> ``in_channels``, ``out_channels`` (= the embedding
  width), ``kernel_size`` and ``num_outs``;
- ``transformer.encoder.layers.0.linear1`` -> ``feedforward_channels``.

Each reading is checked by building the part (mmdet's ResNet / ChannelMapper, on the meta device:
no memory, no initialisation, no download) and comparing its keys and shapes with the weights';
a backbone or neck that this does not describe (DCN, ResNeXt, another neck type) is reported as
such instead of being guessed.
"""

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

_NECK_KEY = re.compile(r'neck\.(convs|extra_convs)\.(\d+)\.(conv|gn)\.(weight|bias)$')


def _signature(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, Tuple[int, ...]]:
    return {
        key[len(prefix) :]: tuple(value.shape)
        for key, value in state.items()
        if key.startswith(prefix) and not key.endswith('num_batches_tracked')
    }


def _built_signature(part_cfg: dict) -> Optional[Dict[str, Tuple[int, ...]]]:
    from mmdet.registry import MODELS

    try:
        with torch.device('meta'):
            return _signature(MODELS.build(dict(part_cfg)).state_dict(), '')
    except Exception:  # noqa: BLE001  (settings that do not build describe nothing)
        return None


def _stage_blocks(state: Mapping[str, torch.Tensor]) -> List[int]:
    blocks: List[int] = []
    while True:
        prefix = f'backbone.layer{len(blocks) + 1}.'
        indices = {int(k[len(prefix) :].split('.')[0]) for k in state if k.startswith(prefix)}
        if not indices:
            return blocks
        blocks.append(max(indices) + 1)


def neck_settings(state: Mapping[str, torch.Tensor]) -> Optional[Dict[str, Any]]:
    """``ChannelMapper`` settings of the weights (with ``norm`` / ``bias``: whether its convolutions
    have a GroupNorm / a bias), or None when the neck is not one."""
    keys = [k for k in state if k.startswith('neck.')]
    if not keys or not all(_NECK_KEY.match(k) for k in keys):
        return None
    convs = sorted({int(_NECK_KEY.match(k).group(2)) for k in keys if '.convs.' in k})
    extra = sorted({int(_NECK_KEY.match(k).group(2)) for k in keys if '.extra_convs.' in k})
    if not convs or convs != list(range(len(convs))) or extra != list(range(len(extra))):
        return None
    first = state['neck.convs.0.conv.weight']
    settings = dict(
        in_channels=[int(state[f'neck.convs.{i}.conv.weight'].shape[1]) for i in convs],
        out_channels=int(first.shape[0]),
        kernel_size=int(first.shape[-1]),
        num_outs=len(convs) + len(extra),
        norm='neck.convs.0.gn.weight' in state,
        bias='neck.convs.0.conv.bias' in state,
    )
    built = _built_signature(_neck_cfg(settings))
    return settings if built == _signature(state, 'neck.') else None


def _neck_cfg(settings: Mapping[str, Any]) -> dict:
    return dict(
        type='ChannelMapper',
        in_channels=list(settings['in_channels']),
        out_channels=settings['out_channels'],
        kernel_size=settings['kernel_size'],
        num_outs=settings['num_outs'],
        bias=settings['bias'],
        act_cfg=None,
        norm_cfg=dict(type='GN', num_groups=1) if settings['norm'] else None,
    )


def backbone_settings(
    state: Mapping[str, torch.Tensor], neck_in_channels: Optional[List[int]]
) -> Optional[Dict[str, Any]]:
    """mmdet ``ResNet`` settings of the weights (``out_indices`` from the widths the neck reads),
    or None when the backbone is not one that these settings build."""
    from mmdet.registry import MODELS

    blocks = _stage_blocks(state)
    if not blocks or 'backbone.conv1.weight' not in state or not neck_in_channels:
        return None
    bottleneck = 'backbone.layer1.0.conv3.weight' in state
    arch = getattr(MODELS.get('ResNet'), 'arch_settings', {})
    depth = next(
        (
            depth
            for depth, (block, stages) in sorted(arch.items())
            if tuple(stages[: len(blocks)]) == tuple(blocks)
            and (getattr(block, 'expansion', 1) > 1) == bottleneck
        ),
        None,
    )
    last_conv = 'conv3' if bottleneck else 'conv2'
    widths = [
        int(state[f'backbone.layer{i + 1}.{count - 1}.{last_conv}.weight'].shape[0])
        for i, count in enumerate(blocks)
    ]
    if depth is None or not all(width in widths for width in neck_in_channels):
        return None
    settings = dict(
        depth=depth,
        num_stages=len(blocks),
        base_channels=int(state['backbone.layer1.0.conv1.weight'].shape[0]),
        stem_channels=int(state['backbone.conv1.weight'].shape[0]),
        out_indices=tuple(widths.index(width) for width in neck_in_channels),
    )
    built = _built_signature(dict(type='ResNet', **settings))
    return settings if built == _signature(state, 'backbone.') else None


def structure_override(
    checkpoint_state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]
) -> Tuple[Dict[str, Dict[str, Any]], List[str]]:
    """The backbone / neck / feed-forward settings to change so that the model's parts have the
    checkpoint's keys and shapes: ``({'backbone': {...}, 'neck': {...}, 'transformer': {...}},
    problems)``. ``problems`` names each part that differs but cannot be described by settings."""
    override: Dict[str, Dict[str, Any]] = {}
    problems: List[str] = []
    ours, theirs = neck_settings(checkpoint_state), neck_settings(model_state)
    if _signature(checkpoint_state, 'neck.') != _signature(model_state, 'neck.'):
        if (
            ours is None
            or theirs is None
            or (ours['norm'], ours['bias'])
            != (
                theirs['norm'],
                theirs['bias'],
            )
        ):
            problems.append('the neck is another type or layout (not the same ChannelMapper)')
        else:
            override['neck'] = {
                key: ours[key]
                for key in ('in_channels', 'out_channels', 'kernel_size', 'num_outs')
                if ours[key] != theirs[key]
            }
    if _signature(checkpoint_state, 'backbone.') != _signature(model_state, 'backbone.'):
        wanted = backbone_settings(checkpoint_state, ours and ours['in_channels'])
        current = backbone_settings(model_state, theirs and theirs['in_channels'])
        if wanted is None or current is None:
            problems.append("the backbone is not a ResNet of mmdet's that its weights describe")
        else:
            changed = {key: value for key, value in wanted.items() if value != current[key]}
            if 'base_channels' in changed or 'stem_channels' in changed:
                # both stated: the stem defaults to base_channels unless a config sets it
                changed.update(
                    base_channels=wanted['base_channels'], stem_channels=wanted['stem_channels']
                )
            # the checkpoint holds every backbone weight: the model's own pretrained backbone
            # (another depth or width) would be downloaded only to be replaced
            override['backbone'] = dict(changed, init_cfg=None)
    key = 'transformer.encoder.layers.0.linear1.weight'
    if key in checkpoint_state and key in model_state:
        ffn = int(checkpoint_state[key].shape[0])
        if ffn != model_state[key].shape[0]:
            override['transformer'] = dict(feedforward_channels=ffn)
    return override, problems
