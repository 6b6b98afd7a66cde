"""Every config under configs/ and projects/*/configs/ loads and its model builds (no weights are
downloaded: building never calls init_weights). Plus the facts each config of ours is about."""

import functools
from pathlib import Path
from typing import List

import pytest
import torch
from mmengine.config import Config

from tests.helpers.tiers import in_fast_tier_configs, slow_except

REPO_ROOT = Path(__file__).resolve().parents[2]
OUR_CONFIG_DIR = REPO_ROOT / 'configs' / 'deformable_detr'


def _config_files() -> List[Path]:
    files = list((REPO_ROOT / 'configs').rglob('*.py'))
    files += list((REPO_ROOT / 'projects').glob('*/configs/**/*.py'))
    return sorted(path for path in files if '__pycache__' not in path.parts)


CONFIG_FILES = _config_files()


def _config_id(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


@functools.cache
def _load(config_path: Path) -> Config:
    """Each file parsed once per session (mmengine resolves the `mmdet::` bases every time); the
    tests below only read it."""
    return Config.fromfile(str(config_path))


def test_configs_are_found():
    ours = [path for path in CONFIG_FILES if OUR_CONFIG_DIR in path.parents]
    assert len(ours) >= 13, [str(p) for p in ours]


@pytest.mark.parametrize('config_path', CONFIG_FILES, ids=_config_id)
def test_config_loads_and_model_builds(config_path: Path):
    from mmdet.registry import MODELS

    cfg = _load(config_path)
    # torchvision is not a dependency: 'torchvision://' checkpoints would import it at init time
    assert 'torchvision://' not in repr(cfg.to_dict())
    if 'model' not in cfg:  # a fragment meant for `_base_` (e.g. a dataset or schedule)
        return
    # on the meta device: every constructor runs, no memory is filled (the initial values are
    # tested in tests/models/test_init.py)
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
        assert sum(p.numel() for p in model.parameters()) > 0
        if 'tta_model' in cfg:  # what tools/test.py --tta builds
            tta_model = MODELS.build(dict(**cfg.tta_model, module=cfg.model))
            assert tta_model.module.__class__ is model.__class__


@pytest.mark.parametrize(
    'config_path', [p for p in CONFIG_FILES if OUR_CONFIG_DIR in p.parents], ids=_config_id
)
def test_our_configs_import_the_plugin(config_path: Path):
    cfg = _load(config_path)
    assert cfg.custom_imports == dict(imports=['mmdet_deformdetr'], allow_failed_imports=False)


def test_primitive_config_training_recipe(load_config):
    """The official training script's defaults, stated once in the primitive."""
    cfg = load_config('deformable-detr_r50_16xb2-50e_coco.py')
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=2e-4, weight_decay=1e-4)
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=0.1, norm_type=2)
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys == {
        'backbone': dict(lr_mult=0.1),
        'sampling_offsets': dict(lr_mult=0.1),
        'reference_points': dict(lr_mult=0.1),
    }
    assert cfg.train_cfg.max_epochs == 50
    assert [(s.type, s.milestones, s.gamma) for s in cfg.param_scheduler] == [
        ('MultiStepLR', [40], 0.1)
    ]
    assert cfg.auto_scale_lr.base_batch_size == 16 * cfg.train_dataloader.batch_size == 32
    assert cfg.val_evaluator.type == cfg.test_evaluator.type == 'CocoMetric'
    assert cfg.model.backbone.init_cfg.checkpoint.startswith('https://download.pytorch.org/')


def test_primitive_config_augmentation(load_config):
    cfg = load_config('deformable-detr_r50_16xb2-50e_coco.py')
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert [t.type for t in pipeline] == [
        'LoadImageFromFile',
        'LoadAnnotations',
        'RandomFlip',
        'RandomChoice',
        'PackDetInputs',
    ]
    assert pipeline[2].prob == 0.5
    multi_scale, resize_crop_resize = pipeline[3].transforms
    short_sides = list(range(480, 801, 32))
    assert [min(s) for s in multi_scale[0].scales] == short_sides
    assert {max(s) for s in multi_scale[0].scales} == {1333}
    assert [t.type for t in resize_crop_resize] == [
        'RandomChoiceResize',
        'RandomCrop',
        'RandomChoiceResize',
    ]
    assert [min(s) for s in resize_crop_resize[0].scales] == [400, 500, 600]
    assert resize_crop_resize[1].crop_type == 'absolute_range'
    assert tuple(resize_crop_resize[1].crop_size) == (384, 600)
    assert resize_crop_resize[2] == multi_scale[0]
    test_resize = [t for t in cfg.test_dataloader.dataset.pipeline if t.type == 'Resize']
    assert [(tuple(t.scale), t.keep_ratio) for t in test_resize] == [((1333, 800), True)]


# config (relative to configs/deformable_detr) -> the model settings it is about
EXPECTED_SETTINGS = {
    'deformable-detr_r50_16xb2-50e_coco.py': dict(
        refine=False, two_stage=False, levels=4, k=4, ms_attn=True, neck='ChannelMapper'
    ),
    'deformable-detr-refine_r50_16xb2-50e_coco.py': dict(refine=True, two_stage=False),
    'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py': dict(refine=True, two_stage=True),
    'ablations/deformable-detr_r50-c5_ssattn-k1_16xb2-50e_coco.py': dict(
        levels=1, k=1, ms_attn=False, out_indices=(3,), neck='ChannelMapper'
    ),
    'ablations/deformable-detr_r50_ssattn-k1_16xb2-50e_coco.py': dict(levels=4, k=1, ms_attn=False),
    'ablations/deformable-detr_r50_ssattn-k4_16xb2-50e_coco.py': dict(levels=4, k=4, ms_attn=False),
    'ablations/deformable-detr_r50_msattn-k4_16xb2-50e_coco.py': dict(levels=4, k=4, ms_attn=True),
    'ablations/deformable-detr_r50_fpn_16xb2-50e_coco.py': dict(
        levels=4, k=4, ms_attn=True, neck='FPN'
    ),
    'ablations/deformable-detr_r50_bifpn_16xb2-50e_coco.py': dict(
        levels=4, k=4, ms_attn=True, neck='BiFPNNeck'
    ),
    'deformable-detr-refine-twostage_r101_16xb2-50e_coco.py': dict(
        refine=True, two_stage=True, backbone=('ResNet', 101)
    ),
    'deformable-detr-refine-twostage_x101-64x4d_16xb2-50e_coco.py': dict(
        refine=True, two_stage=True, backbone=('ResNeXt', 101)
    ),
    'deformable-detr-refine-twostage_x101-64x4d-dconv-c3-c5_16xb2-50e_coco.py': dict(
        refine=True, two_stage=True, backbone=('ResNeXt', 101), dcn=True
    ),
}


@pytest.mark.parametrize(
    'relative_path', slow_except(sorted(EXPECTED_SETTINGS), in_fast_tier_configs)
)
def test_config_settings(load_config, relative_path: str):
    expected = EXPECTED_SETTINGS[relative_path]
    model = load_config(relative_path).model
    actual = dict(
        refine=model.with_box_refine,
        two_stage=model.as_two_stage,
        levels=model.num_feature_levels,
        k=model.transformer.enc_num_points,
        ms_attn=model.transformer.multi_scale_attention,
        neck=model.neck.type,
        out_indices=tuple(model.backbone.out_indices),
        backbone=(model.backbone.type, model.backbone.depth),
        dcn=model.backbone.get('dcn') is not None,
    )
    assert {key: actual[key] for key in expected} == expected
    assert model.transformer.dec_num_points == model.transformer.enc_num_points
    assert model.neck.num_outs == model.num_feature_levels


def test_tta_config(load_config):
    cfg = load_config(
        'deformable-detr-refine-twostage_x101-64x4d-dconv-c3-c5_16xb2-50e-tta_coco.py'
    )
    assert cfg.tta_model.type == 'DetTTAModel'
    assert cfg.tta_model.tta_cfg.max_per_img == cfg.model.test_cfg.max_per_img == 100
    tta = cfg.tta_pipeline[1]
    assert tta.type == 'TestTimeAug'
    resizes, flips = tta.transforms[0], tta.transforms[1]
    assert (1333, 800) in [tuple(t.scale) for t in resizes] and len(resizes) > 1
    assert sorted(t.prob for t in flips) == [0.0, 1.0]


def test_learning_rates_per_parameter(load_config, shrink_backbone):
    """paramwise_cfg reaches the intended parameters of our model: backbone and the linear layers
    predicting sampling locations at lr x 0.1 (official `lr_backbone`, `lr_linear_proj_mult`)."""
    from mmdet.registry import MODELS
    from mmengine.optim import build_optim_wrapper

    cfg = shrink_backbone(load_config('deformable-detr_r50_16xb2-50e_coco.py'))
    model = MODELS.build(cfg.model)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lr_of = {
        id(param): group['lr']
        for group in optim_wrapper.optimizer.param_groups
        for param in group['params']
    }
    slow_transformer_names = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        in_backbone = name.startswith('backbone.')
        predicts_locations = 'sampling_offsets' in name or 'reference_points' in name
        expected_lr = 2e-5 if in_backbone or predicts_locations else 2e-4
        assert lr_of[id(param)] == pytest.approx(expected_lr), name
        if predicts_locations:
            slow_transformer_names.append(name)
    # 6 encoder + 6 decoder sampling_offsets (weight, bias) and reference_points (weight, bias)
    assert len(slow_transformer_names) == 2 * 12 + 2, slow_transformer_names
