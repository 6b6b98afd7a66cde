"""The Hugging Face family (``DeformableDetrForObjectDetection``): its keys -> official keys.

Tell-tale key: ``model.level_embed`` (:func:`is_hf_state_dict`); files are bare state dicts
(``pytorch_model.bin``, ``model.safetensors``). Its table entry composes :func:`hf_to_official`
with the official converter, so only the renames live here. Two layouts are read:

- the Hub files (``SenseTime/deformable-detr*``, transformers 4.x): a timm ResNet under
  ``model.backbone.conv_encoder.model.`` (torchvision names), FFN ``fc1``/``fc2``, decoder
  self-attention ``q_proj``/``k_proj``/``v_proj``/``out_proj``;
- what transformers 5.x writes: FFN ``mlp.fc1``/``mlp.fc2``, self-attention output ``o_proj``
  and, when built without timm, a transformers ResNet (``embedder.embedder.*``,
  ``encoder.stages.N.layers.M.{shortcut,layer.J}.{convolution,normalization}``) under
  ``model.backbone.model.`` (in memory) or ``model.backbone.conv_encoder.model.``
  (``save_pretrained`` files).

The result uses the official names, so :func:`~.convert_official.official_to_ours` finishes the job.
The decoder's q/k/v projections are concatenated into ``in_proj_weight``/``in_proj_bias`` (rows
0:C, C:2C, 2C:3C), which is how ``nn.MultiheadAttention`` stores them.
"""

import re
from typing import Any, Dict, List, Mapping, Optional

import torch

from .report import ConversionReport

_BACKBONE_PREFIXES = ('model.backbone.conv_encoder.model.', 'model.backbone.model.')
_HF_RESNET_STEM = re.compile(r'^embedder\.embedder\.(convolution|normalization)\.(.+)$')
_HF_RESNET_BLOCK = re.compile(
    r'^encoder\.stages\.(\d+)\.layers\.(\d+)\.(shortcut|layer\.(\d))\.(convolution|normalization)'
    r'\.(.+)$'
)
_LAYER_RENAMES = {
    # encoder layer
    ('encoder', 'self_attn_layer_norm'): 'norm1',
    ('encoder', 'final_layer_norm'): 'norm2',
    # decoder layer
    ('decoder', 'self_attn_layer_norm'): 'norm2',
    ('decoder', 'encoder_attn_layer_norm'): 'norm1',
    ('decoder', 'final_layer_norm'): 'norm3',
    ('decoder', 'encoder_attn'): 'cross_attn',
}
_TRANSFORMER_TOP = (
    'level_embed',
    'reference_points.',
    'enc_output.',
    'enc_output_norm.',
    'pos_trans.',
    'pos_trans_norm.',
)


def is_hf_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether a bare state dict has Hugging Face's names."""
    return 'model.level_embed' in state_dict


def _backbone_key(key: str) -> Optional[str]:
    """Torchvision-style ResNet name of an HF backbone key (without prefix), or None if unknown."""
    match = _HF_RESNET_STEM.match(key)
    if match:
        return f'{"conv1" if match.group(1) == "convolution" else "bn1"}.{match.group(2)}'
    match = _HF_RESNET_BLOCK.match(key)
    if match:
        stage, block, part, conv_index, kind, param = match.groups()
        prefix = f'layer{int(stage) + 1}.{block}.'
        if part == 'shortcut':
            return prefix + f'downsample.{"0" if kind == "convolution" else "1"}.{param}'
        number = int(conv_index) + 1
        return prefix + f'{"conv" if kind == "convolution" else "bn"}{number}.{param}'
    if key.startswith(('embedder.', 'encoder.')):
        return None
    return key  # timm / torchvision names already


def _transformer_layer_key(key: str) -> str:
    """``model.{encoder,decoder}.layers.i.<rest>`` -> official ``transformer....`` name."""
    stack, _, rest = key[len('model.') :].partition('.')
    _, index, rest = rest.split('.', 2)
    module, _, param = rest.partition('.')
    if module == 'mlp':  # transformers 5.x nests the FFN
        module, _, param = param.partition('.')
    module = {'fc1': 'linear1', 'fc2': 'linear2'}.get(module, module)
    module = _LAYER_RENAMES.get((stack, module), module)
    if stack == 'decoder' and module == 'self_attn' and param.startswith('o_proj.'):
        param = 'out_proj.' + param[len('o_proj.') :]
    return f'transformer.{stack}.layers.{index}.{module}.{param}'


def hf_to_official(
    state_dict: Mapping[str, torch.Tensor], report: ConversionReport
) -> Dict[str, torch.Tensor]:
    """Rename an HF state dict to official keys; heads stored once (tied weights) are duplicated.

    Raises:
        KeyError: a key that no rule knows.
    """
    official: Dict[str, torch.Tensor] = {}
    qkv: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        new_key: Optional[str]
        backbone_prefix = next((p for p in _BACKBONE_PREFIXES if key.startswith(p)), None)
        if backbone_prefix is not None:
            name = _backbone_key(key[len(backbone_prefix) :])
            if name is None:
                raise KeyError(f'unknown Hugging Face backbone key: {key!r}')
            new_key = 'backbone.0.body.' + name
        elif key.startswith(('model.encoder.layers.', 'model.decoder.layers.')):
            new_key = _transformer_layer_key(key)
            match = re.match(r'(.*\.self_attn)\.([qkv])_proj\.(weight|bias)$', new_key)
            if match and new_key.startswith('transformer.decoder.'):
                merged_key = f'{match.group(1)}.in_proj_{match.group(3)}'
                qkv.setdefault(merged_key, {})[match.group(2)] = value
                report.remapped[key] = merged_key
                continue
        elif key.startswith(('model.decoder.class_embed.', 'model.decoder.bbox_embed.')):
            new_key = 'transformer.decoder.' + key[len('model.decoder.') :]
        elif key.startswith('model.input_proj.'):
            new_key = key[len('model.') :]
        elif key.startswith('model.query_position_embeddings.'):
            new_key = 'query_embed.' + key[len('model.query_position_embeddings.') :]
        elif key.startswith(tuple('model.' + name for name in _TRANSFORMER_TOP)):
            new_key = 'transformer.' + key[len('model.') :]
        elif key.startswith(('class_embed.', 'bbox_embed.')):
            new_key = key
        else:
            raise KeyError(f'unknown key for a Hugging Face Deformable DETR: {key!r}')
        official[new_key] = value
        report.record(key, new_key)
    for name, parts in qkv.items():
        if set(parts) != {'q', 'k', 'v'}:
            raise KeyError(f'incomplete q/k/v projections for {name}: found {sorted(parts)}')
        official[name] = torch.cat([parts['q'], parts['k'], parts['v']], dim=0)
    _fill_tied_heads(official, report)
    return official


def _fill_tied_heads(official: Dict[str, torch.Tensor], report: ConversionReport) -> None:
    """``save_pretrained`` stores tied (shared) heads once; give every head its entry.

    transformers 5.x ties ``class_embed.i`` / ``bbox_embed.i`` (i > 0) to entry 0, and with refine
    (two-stage) ``bbox_embed`` (``class_embed``) to the decoder's copy, and keeps one key per tied
    group: sometimes the decoder alias, which the official layout would drop.
    """
    for alias in [
        k
        for k in official
        if k.startswith(('transformer.decoder.class_embed.', 'transformer.decoder.bbox_embed.'))
    ]:
        head_key = alias[len('transformer.decoder.') :]
        if head_key not in official:
            official[head_key] = official[alias]
            report.filled[head_key] = f'tied to {alias} (the file stores only the alias)'
    decoder_layers = {
        int(m.group(1))
        for k in official
        if (m := re.match(r'transformer\.decoder\.layers\.(\d+)\.', k))
    }
    for head in ('class_embed', 'bbox_embed'):
        stored: List[str] = [k for k in official if k.startswith(f'{head}.0.')]
        for layer in sorted(decoder_layers):
            for key in stored:
                copy_key = f'{head}.{layer}.' + key[len(f'{head}.0.') :]
                if copy_key not in official:
                    official[copy_key] = official[key]
                    report.filled[copy_key] = f'shared with {key} (stored once by the file)'
