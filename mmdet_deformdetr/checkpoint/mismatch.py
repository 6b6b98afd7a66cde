"""What to change when a checkpoint and a model describe different Deformable DETRs: the facts
that differ with the setting of each, the ``model = dict(...)`` override that fits the checkpoint
(backbone and neck included, :mod:`.override`; offered only when it states every difference, so
that it works as written), and the shipped configs whose built model has the checkpoint's keys
and shapes."""

import copy
import functools
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from ..shipped_configs import (
    configs_root,
    external_config_index_read_once,
    shipped_config_files,
)
from .override import structure_override
from .variant import ModelVariant, variant_of_config

# Facts whose disagreement makes a checkpoint unusable for a model, with the setting to change
# (a different class count is a fine-tuning head swap, not a different variant).
_STRUCTURAL = {
    'as_two_stage': 'model.as_two_stage',
    'with_box_refine': 'model.with_box_refine',
    'num_feature_levels': 'model.num_feature_levels',
    'embed_dims': 'model.transformer.embed_dims',
    'num_encoder_layers': 'model.transformer.num_encoder_layers',
    'num_decoder_layers': 'model.transformer.num_decoder_layers',
    'enc_attention_rows': 'model.transformer.enc_num_points / num_heads',
    'dec_attention_rows': 'model.transformer.dec_num_points / num_heads',
    'backbone_blocks': 'model.backbone.depth',
}


def _differences(checkpoint: ModelVariant, model: ModelVariant, names: Iterable[str]) -> List[str]:
    out = []
    for name in names:
        ours, theirs = getattr(checkpoint, name), getattr(model, name)
        if None not in (ours, theirs) and ours != theirs:
            out.append(
                f'{name}: checkpoint {ours} vs model {theirs} ({_STRUCTURAL.get(name, name)})'
            )
    return out


@functools.lru_cache(maxsize=1)
def _shipped_variants() -> Tuple[Tuple[str, ModelVariant, Any], ...]:
    """(config path, variant, model config) of every shipped DeformDETR config (found by
    :func:`~mmdet_deformdetr.shipped_configs.configs_root`, in a checkout or an installed wheel),
    read once per process and only when a mismatch is reported (mmdet's ``_base_`` index is read
    once for all of them)."""
    if _configs_root() is None:
        return ()
    found = []
    with external_config_index_read_once():
        model_cfgs = [(path, _model_config(path)) for path in shipped_config_files()]
    for path, model_cfg in model_cfgs:
        variant = (
            variant_of_config(model_cfg)
            if model_cfg and model_cfg.get('type') == 'DeformDETR'
            else None
        )
        if variant is not None:
            found.append((str(path.relative_to(configs_root().parent)), variant, model_cfg))
    return tuple(found)


def _model_config(path: Path) -> Optional[Any]:
    """The ``model`` of a config file; None when it has none or does not parse (a broken config
    must not hide the mismatch being reported)."""
    from mmengine.config import Config

    try:
        return Config.fromfile(str(path)).get('model')
    except Exception:  # noqa: BLE001
        return None


def _configs_root() -> Optional[Path]:
    """The shipped configs' folder, or None when this installation has none."""
    try:
        return configs_root()
    except FileNotFoundError:
        return None


def _signature(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape, without what a checkpoint may differ in and still load for fine-tuning."""
    return {
        k: tuple(v.shape)
        for k, v in state_dict.items()
        if not k.startswith('bbox_head.cls_branches.') and not k.endswith('num_batches_tracked')
    }


@functools.cache
def _built_signature(config_path: str) -> Dict[str, Tuple[int, ...]]:
    """:func:`_signature` of a shipped config's model, built on the meta device (no memory, no
    initialisation, no download)."""
    from mmdet.registry import MODELS

    model_cfg = next(cfg for path, _, cfg in _shipped_variants() if path == config_path)
    with torch.device('meta'):
        return _signature(MODELS.build(copy.deepcopy(model_cfg)).state_dict())


def shipped_configs_that_fit(
    checkpoint: ModelVariant, state_dict: Optional[Mapping[str, torch.Tensor]] = None
) -> List[str]:
    """Shipped config files (``configs/...``) whose model the checkpoint loads into: the same
    structural facts and, when ``state_dict`` (our keys) is given, the same keys and shapes as the
    built model (so e.g. another neck type does not count as fitting)."""
    names = list(_STRUCTURAL) + ['num_queries']
    fitting = [
        path
        for path, variant, _ in _shipped_variants()
        if not _differences(checkpoint, variant, names)
    ]
    if state_dict is None:
        return fitting
    wanted = _signature(state_dict)
    return [path for path in fitting if _built_signature(path) == wanted]


def _points(rows: int, heads: Optional[int], levels: int) -> Optional[int]:
    if heads is None or rows % (heads * levels):
        return None
    return rows // (heads * levels)


def _dict_text(settings: Mapping[str, Any]) -> str:
    return f'dict({", ".join(f"{key}={value!r}" for key, value in settings.items())})'


def suggest_config(
    checkpoint: ModelVariant,
    model: ModelVariant,
    checkpoint_state: Optional[Mapping[str, torch.Tensor]] = None,
    model_state: Optional[Mapping[str, torch.Tensor]] = None,
) -> str:
    """The ``model = dict(...)`` override that turns ``model`` into the checkpoint's variant.

    With both state dicts (our keys), the backbone, neck and feed-forward width are compared too
    and stated when they differ (:func:`~.override.structure_override`); when a part differs in
    a way no setting states, no override is offered (the text says why).
    """
    top, transformer, notes = [], [], []
    if None not in (checkpoint.with_box_refine, model.with_box_refine) and (
        checkpoint.with_box_refine != model.with_box_refine
    ):
        top.append(f'with_box_refine={checkpoint.with_box_refine}')
    if checkpoint.as_two_stage != model.as_two_stage:
        top.append(f'as_two_stage={checkpoint.as_two_stage}')
    levels = checkpoint.num_feature_levels
    parts, problems = {}, []
    if checkpoint_state is not None and model_state is not None:
        parts, problems = structure_override(checkpoint_state, model_state)
    if levels != model.num_feature_levels:
        top.append(f'num_feature_levels={levels}')
        if checkpoint_state is None or model_state is None:
            notes.append(
                'with the backbone out_indices and the neck in_channels / num_outs to match'
            )
    for part in ('backbone', 'neck'):
        if parts.get(part):
            top.append(f'{part}={_dict_text(parts[part])}')
    if None not in (checkpoint.num_queries, model.num_queries) and (
        checkpoint.num_queries != model.num_queries
    ):
        top.append(f'num_queries={checkpoint.num_queries}')
    for name in ('embed_dims', 'num_encoder_layers', 'num_decoder_layers'):
        if getattr(checkpoint, name) != getattr(model, name):
            transformer.append(f'{name}={getattr(checkpoint, name)}')
    for name, value in parts.get('transformer', {}).items():
        transformer.append(f'{name}={value}')
    single_scale_encoder = model.enc_sampled_levels == 1 and model.num_feature_levels > 1
    for part, sampled in (('enc', 1 if single_scale_encoder else levels), ('dec', levels)):
        rows = getattr(checkpoint, f'{part}_attention_rows')
        if rows == getattr(model, f'{part}_attention_rows'):
            continue
        points = _points(rows, model.num_heads, sampled)
        if points is None:
            problems.append(
                f'{part} attention rows {rows} are not num_heads ({model.num_heads}) x '
                f'{sampled} level(s) x a whole K: the checkpoint has another '
                'model.transformer.num_heads (the weights cannot tell heads from K)'
            )
        elif points != getattr(model, f'{part}_num_points'):
            transformer.append(f'{part}_num_points={points}')
    if any('_num_points=' in item for item in transformer):
        notes.append(
            f"K from rows = num_heads x levels x K with the model's "
            f'num_heads={model.num_heads}; if the checkpoint has other heads, change '
            'model.transformer.num_heads instead'
        )
    if problems:  # an override without them would not load: none rather than half of one
        return (
            f'no model = dict(...) override states every difference ({"; ".join(problems)}); '
            'use a config that fits'
        )
    if transformer:
        top.append(f'transformer=dict({", ".join(transformer)})')
    override = f'model = dict({", ".join(top)})' if top else 'no model = dict(...) override'
    return '; '.join([override] + notes)


def variant_mismatch(
    checkpoint: ModelVariant,
    model: ModelVariant,
    checkpoint_state: Optional[Mapping[str, torch.Tensor]] = None,
    model_state: Optional[Mapping[str, torch.Tensor]] = None,
) -> Optional[str]:
    """A message explaining why ``checkpoint`` cannot load into ``model``, or None if it can.

    ``checkpoint_state`` (our keys) makes the list of shipped configs that fit exact (keys and
    shapes of the built models, see :func:`shipped_configs_that_fit`); with ``model_state`` too,
    the suggested override includes the backbone and neck (:func:`suggest_config`).

    Different ``num_classes`` or ``num_queries`` are not structural (fine-tuning on another dataset
    swaps the classification head); they are size mismatches that the load hook and
    :func:`~.load_hook.check_checkpoint_for_testing` report.
    """
    differences = _differences(checkpoint, model, _STRUCTURAL)
    if not differences:
        return None
    configs = shipped_configs_that_fit(checkpoint, checkpoint_state)
    shipped = (
        ', '.join(configs)
        if configs
        else f'none of those in {_configs_root()}'
        if _configs_root() is not None
        else 'none found (this installation has no configs folder)'
    )
    return (
        'checkpoint and model are different Deformable DETR variants:\n  '
        + '\n  '.join(differences)
        + f'\ncheckpoint: {checkpoint.describe()}\nmodel:      {model.describe()}'
        + '\nsettings that fit the checkpoint: '
        + suggest_config(checkpoint, model, checkpoint_state, model_state)
        + f'\nshipped configs that fit the checkpoint: {shipped}'
    )
