"""Hugging Face ``DeformableDetrForObjectDetection`` weights load into ours and compute the same.

The HF model is built from a local config (no download): a transformers ResNet-50 layout with small
widths (stem 16, outputs 64..512), d_model 64, 2 + 2 layers. Both the files transformers 5.x writes
(``save_pretrained``: ``model.safetensors`` + ``config.json``) and the Hub layout of the
``SenseTime/deformable-detr*`` files (timm ResNet names, ``fc1``/``fc2``, ``out_proj``) are checked.
"""

import re
from pathlib import Path
from typing import Dict

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.runner import load_checkpoint

from tests.helpers.checkpoints import COCO_IDS
from tests.helpers.models import r50_model_cfg
from tests.helpers.tiers import slow_except

TOLERANCE = 1e-6  # float32; measured <= 4.8e-7 over the cases below (docs/faithfulness.md)
VARIANTS = {
    'plain': dict(),
    'refine': dict(with_box_refine=True),
    'two_stage': dict(with_box_refine=True, two_stage=True),
}
D_MODEL, NUM_QUERIES, LAYERS = 64, 20, 2


def build_hf(variant: str, num_labels: int):
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(
        out_features=['stage2', 'stage3', 'stage4'],
        embedding_size=16,
        hidden_sizes=[64, 128, 256, 512],
        depths=[3, 4, 6, 3],
    )
    config = DeformableDetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone=None,
        backbone_config=backbone,
        d_model=D_MODEL,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=NUM_QUERIES,
        two_stage_num_proposals=NUM_QUERIES,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        id2label={i: f'class_{i}' for i in range(num_labels)},
        **VARIANTS[variant],
    )
    torch.manual_seed(0)
    model = DeformableDetrForObjectDetection(config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # off the degenerate init, and refine branches made distinct
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
        for name, buffer in model.named_buffers():
            if name.endswith('running_mean'):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
            elif name.endswith('running_var'):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return model


def build_ours(variant: str, num_classes: int) -> torch.nn.Module:
    cfg = r50_model_cfg(variant, num_classes)
    cfg.update(num_queries=NUM_QUERIES)
    cfg['backbone'].update(base_channels=16, stem_channels=16)
    cfg['neck'].update(in_channels=[128, 256, 512], out_channels=D_MODEL)
    cfg['transformer'].update(
        embed_dims=D_MODEL,
        num_encoder_layers=LAYERS,
        num_decoder_layers=LAYERS,
        feedforward_channels=32,
        dropout=0.0,
    )
    torch.manual_seed(123)
    return MODELS.build(cfg).eval()


def hub_layout(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The names of the Hub files (transformers 4.x, timm backbone), from a transformers 5.x
    dict."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith('model.backbone.model.'):
            rest = key[len('model.backbone.model.') :]
            rest = re.sub(r'^embedder\.embedder\.convolution', 'conv1', rest)
            rest = re.sub(r'^embedder\.embedder\.normalization', 'bn1', rest)
            match = re.match(r'encoder\.stages\.(\d)\.layers\.(\d+)\.(.*)', rest)
            if match:
                stage, block, part = match.groups()
                part = re.sub(r'^shortcut\.convolution', 'downsample.0', part)
                part = re.sub(r'^shortcut\.normalization', 'downsample.1', part)
                part = re.sub(
                    r'^layer\.(\d)\.convolution', lambda m: f'conv{int(m.group(1)) + 1}', part
                )
                part = re.sub(
                    r'^layer\.(\d)\.normalization', lambda m: f'bn{int(m.group(1)) + 1}', part
                )
                rest = f'layer{int(stage) + 1}.{block}.{part}'
            key = 'model.backbone.conv_encoder.model.' + rest
        key = key.replace('.mlp.fc', '.fc').replace('self_attn.o_proj', 'self_attn.out_proj')
        out[key] = value
    return out


def assert_same_outputs(hf_model, ours, variant: str, remap: bool) -> None:
    generator = torch.Generator().manual_seed(2)
    pixels = torch.randn(1, 3, 96, 128, generator=generator)
    with torch.no_grad():
        expected = hf_model(
            pixel_values=pixels, pixel_mask=torch.ones(1, 96, 128, dtype=torch.long)
        )
        all_scores, all_boxes = ours._forward(pixels, None)
    logits, boxes = all_scores[-1], all_boxes[-1]
    expected_logits = expected.logits[..., COCO_IDS] if remap else expected.logits
    assert logits.shape == expected_logits.shape
    assert (logits - expected_logits).abs().max() <= TOLERANCE
    assert (boxes - expected.pred_boxes).abs().max() <= TOLERANCE


@pytest.mark.parametrize('variant', slow_except(VARIANTS, lambda variant: variant == 'two_stage'))
def test_transformers5_save_pretrained_dir_loads_and_matches(variant, tmp_path: Path):
    """91 COCO-id labels -> our 80 classes, through load_from='deformdetr://<dir>'."""
    hf_model = build_hf(variant, num_labels=91)
    hf_model.save_pretrained(tmp_path)
    assert (tmp_path / 'model.safetensors').is_file() and (tmp_path / 'config.json').is_file()
    ours = build_ours(variant, num_classes=80)
    load_checkpoint(ours, f'deformdetr://{tmp_path}', map_location='cpu', strict=True)
    assert_same_outputs(hf_model, ours, variant, remap=True)


@pytest.mark.parametrize(
    'variant', slow_except(['plain', 'two_stage'], lambda variant: variant == 'plain')
)
def test_hub_layout_bin_loads_and_matches(variant, tmp_path: Path):
    """A ``pytorch_model.bin`` with the Hub's names; the label count (3) is kept as is."""
    hf_model = build_hf(variant, num_labels=3)
    path = tmp_path / 'pytorch_model.bin'
    torch.save(hub_layout(hf_model.state_dict()), path)
    ours = build_ours(variant, num_classes=3)
    load_checkpoint(ours, str(path), map_location='cpu', strict=True)
    assert_same_outputs(hf_model, ours, variant, remap=False)
