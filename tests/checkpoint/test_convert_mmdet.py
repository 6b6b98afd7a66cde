"""convert_mmdet_state_dict: mmdet 3.x zoo-config models map key for key, shape for shape, onto
ours (R-50, 6 + 6 layers); missing neck biases become zeros; foreign keys are refused.

(Numerical parity of the mapped model is in tests/models/test_parity_mmdet.py.)"""

import copy
from pathlib import Path

import mmdet
import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config

from mmdet_deformdetr.checkpoint.convert_mmdet import convert_mmdet_key, convert_mmdet_state_dict
from tests.helpers.models import build_r50
from tests.helpers.tiers import slow_except

MMDET_CONFIGS = Path(mmdet.__file__).parent / '.mim' / 'configs' / 'deformable_detr'
# variant -> (mmdet zoo config, our R-50 build of the same variant)
ZOO = {
    'plain': ('deformable-detr_r50_16xb2-50e_coco.py', 'plain'),
    'refine': ('deformable-detr-refine_r50_16xb2-50e_coco.py', 'refine'),
    'two_stage': ('deformable-detr-refine-twostage_r50_16xb2-50e_coco.py', 'two_stage'),
}


def mmdet_zoo_model(config_name: str) -> torch.nn.Module:
    model_cfg = copy.deepcopy(Config.fromfile(str(MMDET_CONFIGS / config_name)).model)
    model_cfg.backbone.init_cfg = None
    return MODELS.build(model_cfg)


@pytest.mark.skipif(not MMDET_CONFIGS.is_dir(), reason='mmdet installed without its configs')
@pytest.mark.parametrize('variant', slow_except(ZOO, lambda variant: variant == 'two_stage'))
def test_zoo_layout_maps_onto_ours(variant: str) -> None:
    config_name, our_build = ZOO[variant]
    reference_state = mmdet_zoo_model(config_name).state_dict()
    # the zoo neck has no conv bias (GroupNorm follows); ours has the official one
    assert 'neck.convs.0.conv.bias' not in reference_state
    converted = convert_mmdet_state_dict(reference_state)
    ours = build_r50(our_build)
    expected = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected
    ours.load_state_dict(converted, strict=True)
    for index in range(3):
        assert not ours.neck.convs[index].conv.bias.any()
    assert not ours.neck.extra_convs[0].conv.bias.any()
    # tensors are renamed, not copied or changed
    assert (
        converted['transformer.decoder.layers.0.norm2.weight']
        is reference_state['decoder.layers.0.norms.0.weight']
    )


@pytest.mark.parametrize(
    'mmdet_key,our_key',
    [
        ('encoder.layers.3.ffn.layers.0.0.weight', 'transformer.encoder.layers.3.linear1.weight'),
        ('encoder.layers.3.ffn.layers.1.bias', 'transformer.encoder.layers.3.linear2.bias'),
        ('encoder.layers.0.norms.1.bias', 'transformer.encoder.layers.0.norm2.bias'),
        ('decoder.layers.5.norms.0.weight', 'transformer.decoder.layers.5.norm2.weight'),
        ('decoder.layers.5.norms.1.weight', 'transformer.decoder.layers.5.norm1.weight'),
        ('decoder.layers.5.norms.2.weight', 'transformer.decoder.layers.5.norm3.weight'),
        (
            'decoder.layers.1.self_attn.attn.in_proj_weight',
            'transformer.decoder.layers.1.self_attn.in_proj_weight',
        ),
        (
            'decoder.layers.1.self_attn.attn.out_proj.bias',
            'transformer.decoder.layers.1.self_attn.out_proj.bias',
        ),
        (
            'decoder.layers.1.cross_attn.sampling_offsets.weight',
            'transformer.decoder.layers.1.cross_attn.sampling_offsets.weight',
        ),
        ('query_embedding.weight', 'transformer.query_embed.weight'),
        ('reference_points_fc.bias', 'transformer.reference_points.bias'),
        ('memory_trans_fc.weight', 'transformer.enc_output.weight'),
        ('memory_trans_norm.bias', 'transformer.enc_output_norm.bias'),
        ('pos_trans_fc.weight', 'transformer.pos_trans.weight'),
        ('bbox_head.reg_branches.6.4.bias', 'bbox_head.reg_branches.6.layers.2.bias'),
        ('bbox_head.cls_branches.6.weight', 'bbox_head.cls_branches.6.weight'),
        ('backbone.layer1.0.bn1.running_mean', 'backbone.layer1.0.bn1.running_mean'),
    ],
)
def test_key_rules(mmdet_key: str, our_key: str) -> None:
    assert convert_mmdet_key(mmdet_key) == our_key


@pytest.mark.parametrize(
    'mmdet_key',
    [
        'encoder.layers.0.norms.2.weight',
        'decoder.layers.0.norms.3.bias',
        'bbox_head.reg_branches.0.1.weight',
    ],
)
def test_indices_outside_the_tables_are_unknown_keys(mmdet_key: str) -> None:
    with pytest.raises(KeyError, match=mmdet_key.replace('.', r'\.')):
        convert_mmdet_key(mmdet_key)


def test_foreign_keys_are_refused() -> None:
    with pytest.raises(ValueError, match='class_embed'):
        convert_mmdet_state_dict(
            {'level_embed': torch.zeros(4, 8), 'class_embed.0.weight': torch.zeros(91, 8)}
        )


def test_existing_neck_bias_is_kept() -> None:
    state = {
        'neck.convs.0.conv.weight': torch.ones(4, 2, 1, 1),
        'neck.convs.0.conv.bias': torch.arange(4.0),
        'neck.extra_convs.0.conv.weight': torch.ones(4, 2, 3, 3),
    }
    converted = convert_mmdet_state_dict(state)
    assert torch.equal(converted['neck.convs.0.conv.bias'], torch.arange(4.0))
    assert torch.equal(converted['neck.extra_convs.0.conv.bias'], torch.zeros(4))
