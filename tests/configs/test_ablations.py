"""The paper's Table 2 rows change only what the paper varied, on the built models.

Each ablation config is built and compared with the default model (the primitive config): the
state-dict entries that differ in name or shape must all belong to the factor of that row (points
K, feature levels, the neck), the attention class must be the row's, and everything outside the
model (optimiser, schedule, data) must be the primitive's. Rows that mmdet can express are also
trained one step against mmdet in tests/models/test_train_step_parity.py.
"""

import re
from typing import Dict, Tuple

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config

from mmdet_deformdetr.models.layers import MSDeformAttn, SingleScaleDeformAttn
from tests.helpers.models import CONFIG_DIR, PRIMITIVE_CONFIG

POINTS = (
    r'transformer\.(en|de)coder\.layers\.\d+\.(self|cross)_attn\.'
    r'(sampling_offsets|attention_weights)\.'
)
LEVELS = r'(transformer\.level_embed$|neck\.)'
NECK = r'neck\.'
# row -> (config, patterns allowed to differ, encoder attention, decoder attention)
ROWS: Dict[str, Tuple[str, Tuple[str, ...], type, type]] = {
    'c5_ssattn_k1': (
        'deformable-detr_r50-c5_ssattn-k1_16xb2-50e_coco.py',
        (POINTS, LEVELS),
        SingleScaleDeformAttn,
        SingleScaleDeformAttn,
    ),
    'ssattn_k1': (
        'deformable-detr_r50_ssattn-k1_16xb2-50e_coco.py',
        (POINTS,),
        SingleScaleDeformAttn,
        SingleScaleDeformAttn,
    ),
    'ssattn_k4': (
        'deformable-detr_r50_ssattn-k4_16xb2-50e_coco.py',
        (POINTS,),
        SingleScaleDeformAttn,
        SingleScaleDeformAttn,
    ),
    'msattn_k4': (
        'deformable-detr_r50_msattn-k4_16xb2-50e_coco.py',
        (),
        MSDeformAttn,
        MSDeformAttn,
    ),
    'fpn': ('deformable-detr_r50_fpn_16xb2-50e_coco.py', (NECK,), MSDeformAttn, MSDeformAttn),
    'bifpn': ('deformable-detr_r50_bifpn_16xb2-50e_coco.py', (NECK,), MSDeformAttn, MSDeformAttn),
}
NOT_MODEL = (
    'optim_wrapper',
    'param_scheduler',
    'train_cfg',
    'val_cfg',
    'test_cfg',
    'train_dataloader',
    'val_dataloader',
    'test_dataloader',
    'val_evaluator',
    'auto_scale_lr',
    'default_hooks',
)


def _built(cfg: Config):
    """The model on the meta device (keys, shapes and module types; no memory, no init)."""
    cfg.model.backbone.init_cfg = None
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    return model, {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.fixture(scope='module')
def default():
    cfg = Config.fromfile(str(PRIMITIVE_CONFIG))
    return cfg, _built(cfg)[1]


def test_every_ablation_config_is_a_row():
    found = {path.name for path in (CONFIG_DIR / 'ablations').glob('*.py')}
    assert found == {row[0] for row in ROWS.values()}


@pytest.mark.parametrize('row', list(ROWS))
def test_ablation_changes_only_its_factor(row: str, default) -> None:
    default_cfg, default_shapes = default
    name, allowed, encoder_attention, decoder_attention = ROWS[row]
    cfg = Config.fromfile(str(CONFIG_DIR / 'ablations' / name))
    model, shapes = _built(cfg)
    differing = sorted(
        key
        for key in set(shapes) | set(default_shapes)
        if shapes.get(key) != default_shapes.get(key)
    )
    outside = [key for key in differing if not any(re.match(p, key) for p in allowed)]
    assert outside == [], f'{row} changes more than its factor: {outside[:5]}'
    assert bool(differing) == bool(allowed)
    assert type(model.transformer.encoder.layers[0].self_attn) is encoder_attention
    assert type(model.transformer.decoder.layers[0].cross_attn) is decoder_attention
    for key in NOT_MODEL:
        assert cfg.get(key) == default_cfg.get(key), f'{row} changes {key}'
