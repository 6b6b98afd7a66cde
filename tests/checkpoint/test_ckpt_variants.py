"""Wrong-variant checkpoints are refused with a message naming the facts, keys and a fitting
config."""

from pathlib import Path

import pytest
import torch
from mmengine.runner import load_checkpoint

from mmdet_deformdetr.checkpoint import infer_variant, variant_of_model
from tests.helpers.checkpoints import (
    build_official_r50,
    make_official_state_dict,
    save_official_file,
)
from tests.helpers.models import REPO_ROOT, build_tiny_model, tiny_model_cfg


def _save_ours(model: torch.nn.Module, path: Path) -> Path:
    torch.save({'meta': {'epoch': 1}, 'state_dict': model.state_dict()}, path)
    return path


@pytest.mark.slow
def test_official_two_stage_into_plain_r50(official_listing, tmp_path: Path):
    path = save_official_file(
        tmp_path / 'twostage.pth',
        make_official_state_dict(official_listing['two_stage']),
        'two_stage',
    )
    model = build_official_r50('plain')
    with pytest.raises(ValueError) as error:
        load_checkpoint(model, str(path), map_location='cpu')
    message = str(error.value)
    assert 'as_two_stage: checkpoint True vs model False' in message
    assert 'with_box_refine: checkpoint True vs model False' in message
    assert 'model = dict(with_box_refine=True, as_two_stage=True)' in message
    assert 'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py' in message
    assert 'transformer.enc_output' in message  # names keys only in the checkpoint
    assert 'transformer.query_embed.weight' in message  # ... and keys only in the model


@pytest.mark.slow
def test_official_single_scale_into_four_level_r50(official_listing, tmp_path: Path):
    path = save_official_file(
        tmp_path / 'ss.pth',
        make_official_state_dict(official_listing['single_scale']),
        'single_scale',
    )
    with pytest.raises(ValueError) as error:
        load_checkpoint(build_official_r50('plain'), str(path), map_location='cpu')
    message = str(error.value)
    assert 'num_feature_levels: checkpoint 1 vs model 4' in message
    assert 'num_feature_levels=1' in message
    assert 'transformer.level_embed: checkpoint (1, 256) vs model (4, 256)' in message


@pytest.mark.slow
@pytest.mark.parametrize(
    'saved, loaded, expected',
    [
        ('two_stage', 'plain', 'as_two_stage: checkpoint True vs model False'),
        ('refine', 'plain', 'with_box_refine: checkpoint True vs model False'),
        ('plain', 'refine', 'with_box_refine: checkpoint False vs model True'),
    ],
)
def test_our_checkpoint_of_another_variant(saved, loaded, expected, tmp_path: Path):
    source = build_tiny_model(saved)
    with torch.no_grad():  # trained refine branches differ; fresh copies would be ambiguous
        for param in source.bbox_head.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    path = _save_ours(source, tmp_path / 'ours.pth')
    with pytest.raises(ValueError, match=expected):
        load_checkpoint(build_tiny_model(loaded), str(path), map_location='cpu')


@pytest.mark.slow  # the message lists the shipped configs that fit: every config is read
def test_points_mismatch_names_shapes(tmp_path: Path):
    path = _save_ours(build_tiny_model('plain'), tmp_path / 'k2.pth')  # enc/dec K = 2, 2 heads
    model = build_tiny_model('plain')
    model_k1 = build_tiny_with_points(1)
    with pytest.raises(ValueError) as error:
        load_checkpoint(model_k1, str(path), map_location='cpu')
    message = str(error.value)
    assert 'enc_attention_rows: checkpoint 16 vs model 8' in message
    assert 'sampling_offsets.weight: checkpoint' in message
    load_checkpoint(model, str(path), map_location='cpu', strict=True)  # same variant: fine


def build_tiny_with_points(points: int) -> torch.nn.Module:
    from mmdet.registry import MODELS

    cfg = tiny_model_cfg('plain')
    cfg['transformer'].update(enc_num_points=points, dec_num_points=points)
    return MODELS.build(cfg)


def test_other_class_count_is_not_a_variant_error(tmp_path: Path):
    """Fine-tuning on another dataset: the heads mismatch in size and are skipped (a warning)."""
    path = _save_ours(build_tiny_model('plain'), tmp_path / 'three.pth')
    model = build_tiny_model('plain')
    model.bbox_head.cls_branches[0].weight.data = torch.zeros(5, 32)  # pretend: 5 classes
    load_checkpoint(model, str(path), map_location='cpu')  # no ValueError


def test_infer_variant_from_official_listing(official_listing):
    from mmdet_deformdetr.checkpoint import convert_state_dict

    expected = {
        'plain': ('plain', 4),
        'refine': ('refine', 4),
        'two_stage': ('two-stage', 4),
        'single_scale': ('plain', 1),
    }
    for name, (variant_name, levels) in expected.items():
        converted, report = convert_state_dict(make_official_state_dict(official_listing[name]))
        variant = infer_variant(converted)
        assert (variant.name, variant.num_feature_levels) == (variant_name, levels)
        assert variant.enc_attention_rows == 8 * levels * 4 and variant.num_decoder_layers == 6
        assert report.source_format == 'official Deformable-DETR'


@pytest.mark.slow  # the message lists the shipped configs that fit: every config is read
def test_points_suggestion_uses_the_models_own_heads(make_tiny_file):
    """2 heads x 4 levels x K=2 = 16 rows into a K=1 model: K=2 is derived with the MODEL's
    num_heads (2), not an assumed 8."""
    with pytest.raises(ValueError) as error:
        load_checkpoint(build_tiny_with_points(1), str(make_tiny_file('plain')), map_location='cpu')
    message = str(error.value)
    assert 'model = dict(transformer=dict(enc_num_points=2, dec_num_points=2))' in message
    assert "with the model's num_heads=2" in message and 'model.transformer.num_heads' in message
    assert 'num_heads=2, K=1/1' in message  # the model's own attributes, in its description


def test_rows_without_a_whole_k_name_num_heads(tmp_path: Path):
    """1 head x 4 levels x K=1 = 4 rows: no whole K for the model's 2 heads x 4 levels, so the
    message names num_heads instead of inventing a K."""
    from mmdet.registry import MODELS

    cfg = tiny_model_cfg('plain', num_heads=1)
    cfg['transformer'].update(enc_num_points=1, dec_num_points=1)
    path = _save_ours(MODELS.build(cfg), tmp_path / 'one_head.pth')
    with pytest.raises(ValueError) as error:
        load_checkpoint(build_tiny_model('plain'), str(path), map_location='cpu')
    message = str(error.value)
    assert 'enc_attention_rows: checkpoint 4 vs model 16' in message
    for part in ('enc', 'dec'):
        assert (
            f'{part} attention rows 4 are not num_heads (2) x 4 level(s) x a whole K: the '
            'checkpoint has another model.transformer.num_heads'
        ) in message
    assert '_num_points=' not in message


def test_checkpoint_description_assumes_no_head_count(official_listing):
    from mmdet_deformdetr.checkpoint import convert_state_dict

    converted, report = convert_state_dict(make_official_state_dict(official_listing['plain']))
    assert 'attention rows 128/128 (enc/dec = num_heads x sampled levels x K)' in report.variant
    assert 'num_heads' not in report.variant.split('K)')[1] and '8 heads' not in report.variant


@pytest.mark.slow
def test_fitting_configs_have_the_same_keys_not_just_the_same_flags(official_listing, tmp_path):
    """Official plain weights into a refine model: the primitive config fits; the FPN and BiFPN
    neck ablations share every flag but not the neck's keys, so they are not offered."""
    path = save_official_file(
        tmp_path / 'plain.pth', make_official_state_dict(official_listing['plain']), 'plain'
    )
    with pytest.raises(ValueError) as error:
        load_checkpoint(build_official_r50('refine'), str(path), map_location='cpu')
    fitting = str(error.value).split('shipped configs that fit the checkpoint: ')[1].split('\n')[0]
    assert 'configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py' in fitting.split(', ')
    assert 'fpn' not in fitting and 'bifpn' not in fitting and 'refine' not in fitting


SHIPPED = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / 'configs').glob('**/*.py'))


@pytest.mark.slow
@pytest.mark.parametrize('config', SHIPPED)
def test_config_facts_equal_the_built_models(config):
    """variant_of_config (what the fitting-config search reads) equals variant_of_model of the
    model the config builds (on the meta device; branch sharing is not observable there)."""
    import dataclasses

    from mmdet.registry import MODELS
    from mmengine.config import Config

    from mmdet_deformdetr.checkpoint.variant import variant_of_config

    model_cfg = Config.fromfile(str(REPO_ROOT / config)).model
    model_cfg.backbone.pop('init_cfg', None)
    with torch.device('meta'):
        model = MODELS.build(model_cfg)
    from_config = variant_of_config(model_cfg)
    assert from_config is not None
    assert from_config == dataclasses.replace(
        variant_of_model(model), with_box_refine=from_config.with_box_refine
    )


def _suggested_override(message: str) -> str:
    line = next(
        line
        for line in message.splitlines()
        if line.startswith('settings that fit the checkpoint: ')
    )
    override = line[len('settings that fit the checkpoint: ') :].split('; ')[0]
    assert override.startswith('model = dict('), line
    return override


DEMO_CONFIG = REPO_ROOT / 'configs' / 'demo' / 'deformable-detr-refine-twostage_r18_shapes.py'
TWO_STAGE_R50 = (
    REPO_ROOT / 'configs/deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'
)
PLAIN_R50 = REPO_ROOT / 'configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'


@pytest.mark.slow
@pytest.mark.parametrize(
    'source, target',
    [
        ('demo', TWO_STAGE_R50),  # half-width ResNet-18, 3 levels, 128-d, 2 + 4 layers
        ('small', PLAIN_R50),  # ResNet-18, 32-d, 1 + 2 layers
    ],
    ids=['demo_into_two_stage_r50', 'small_into_plain_r50'],
)
def test_suggested_override_loads_when_applied_as_written(source, target, tmp_path: Path):
    """The override in the message, pasted under `_base_ = <the config>`, builds a model that the
    checkpoint loads into, every key and shape (strict): backbone and neck included."""
    from mmdet.registry import MODELS
    from mmengine.config import Config

    if source == 'demo':
        source_cfg = Config.fromfile(str(DEMO_CONFIG)).model
    else:  # ResNet-18, 32-d, 8 heads (a whole K for the R-50 config's 8 heads), 1 + 2 layers
        source_cfg = Config(dict(model=tiny_model_cfg('plain', num_heads=8))).model
    source_cfg.bbox_head.num_classes = 80  # the class count is not a variant difference
    torch.manual_seed(0)
    path = _save_ours(MODELS.build(source_cfg), tmp_path / f'{source}.pth')

    target_cfg = Config.fromfile(str(target)).model
    target_cfg.backbone.init_cfg = None  # nothing to download for the refused model
    with pytest.raises(ValueError) as error:
        load_checkpoint(MODELS.build(target_cfg), str(path), map_location='cpu')
    override = _suggested_override(str(error.value))
    assert 'backbone=dict(depth=18' in override and 'init_cfg=None' in override
    assert 'neck=dict(in_channels=[' in override

    config = tmp_path / 'with_override.py'
    config.write_text(f'_base_ = {str(target)!r}\n{override}\n')
    fitted = MODELS.build(Config.fromfile(str(config)).model)
    load_checkpoint(fitted, str(path), map_location='cpu', strict=True)


def test_no_half_override_when_a_part_cannot_be_stated(tmp_path: Path):
    """A neck of another type cannot be stated as ChannelMapper settings: the message offers no
    override (one without the neck would not load) and points to a config that fits."""
    from mmdet.registry import MODELS

    cfg = tiny_model_cfg('plain')
    cfg['neck'] = dict(
        type='BiFPNNeck', in_channels=[128, 256, 512], out_channels=32, num_outs=4, num_repeats=1
    )
    cfg['transformer']['num_encoder_layers'] = 2
    path = _save_ours(MODELS.build(cfg), tmp_path / 'bifpn.pth')
    with pytest.raises(ValueError) as error:
        load_checkpoint(build_tiny_model('plain'), str(path), map_location='cpu')
    message = str(error.value)
    assert (
        'settings that fit the checkpoint: no model = dict(...) override states every '
        'difference (the neck is another type or layout'
    ) in message
    assert 'model = dict(transformer' not in message
