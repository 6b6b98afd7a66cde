"""Official Deformable-DETR files (layout of the reference listing) load into our R-50 models."""

from pathlib import Path

import pytest
import torch
from mmengine.runner import load_checkpoint

from tests.helpers.checkpoints import (
    COCO_IDS,
    build_official_r50,
    make_official_state_dict,
    save_official_file,
)
from tests.helpers.tiers import slow_except

VARIANTS = ['plain', 'refine', 'two_stage', 'single_scale']


@pytest.mark.parametrize('variant', slow_except(VARIANTS, lambda variant: variant == 'plain'))
def test_official_file_loads_strictly_with_class_remap(variant, official_listing, tmp_path: Path):
    official = make_official_state_dict(official_listing[variant], seed=1)
    path = save_official_file(tmp_path / 'official.pth', official, variant)
    model = build_official_r50(variant)

    # mmengine's own loader (torch.load with torch's default weights_only=True) reads the file,
    # argparse.Namespace being allow-listed; strict=True: no missing or unexpected keys
    load_checkpoint(model, str(path), map_location='cpu', strict=True)
    ours = model.state_dict()

    num_dec = 6
    for i in range(num_dec):
        cls = model.bbox_head.cls_branches[i]
        for c, coco_id in enumerate(COCO_IDS):
            assert torch.equal(cls.weight[c], official[f'class_embed.{i}.weight'][coco_id])
            assert cls.bias[c] == official[f'class_embed.{i}.bias'][coco_id]
        for j in range(3):
            assert torch.equal(
                ours[f'bbox_head.reg_branches.{i}.layers.{j}.weight'],
                official[f'bbox_embed.{i}.layers.{j}.weight'],
            )
    if variant == 'two_stage':
        # proposal branch: channel 0 is the official objectness logit (kept as channels 0..79)
        assert torch.equal(
            ours['bbox_head.cls_branches.6.weight'], official['class_embed.6.weight'][:80]
        )
        assert ours['bbox_head.cls_branches.6.bias'][0] == official['class_embed.6.bias'][0]
        assert torch.equal(
            ours['transformer.enc_output.weight'], official['transformer.enc_output.weight']
        )
    else:
        assert torch.equal(ours['transformer.query_embed.weight'], official['query_embed.weight'])
    if variant in ('plain', 'single_scale'):  # shared branches stay one module
        assert model.bbox_head.cls_branches[0] is model.bbox_head.cls_branches[5]

    # every other tensor is the official one under its mapped name
    assert torch.equal(
        ours['backbone.layer3.2.conv2.weight'], official['backbone.0.body.layer3.2.conv2.weight']
    )
    assert torch.equal(
        ours['backbone.bn1.running_var'], official['backbone.0.body.bn1.running_var']
    )
    assert torch.equal(ours['neck.convs.0.conv.bias'], official['input_proj.0.0.bias'])
    assert torch.equal(ours['neck.convs.0.gn.weight'], official['input_proj.0.1.weight'])
    if variant != 'single_scale':
        assert torch.equal(
            ours['neck.extra_convs.0.conv.weight'], official['input_proj.3.0.weight']
        )
        assert torch.equal(ours['neck.extra_convs.0.conv.bias'], official['input_proj.3.0.bias'])
        assert torch.equal(ours['neck.extra_convs.0.gn.bias'], official['input_proj.3.1.bias'])
    for key in (
        'transformer.level_embed',
        'transformer.encoder.layers.5.self_attn.sampling_offsets.weight',
        'transformer.decoder.layers.3.self_attn.in_proj_weight',
        'transformer.decoder.layers.3.norm2.weight',
        'transformer.decoder.layers.0.cross_attn.value_proj.bias',
    ):
        assert torch.equal(ours[key], official[key])
    mapped = {k for k in ours if not k.endswith('num_batches_tracked')}
    assert len(mapped) == len(
        [
            k
            for k in official
            if not k.startswith(
                ('transformer.decoder.class_embed', 'transformer.decoder.bbox_embed')
            )
        ]
    )


@pytest.mark.slow
def test_official_file_with_91_class_model_keeps_channels(official_listing, tmp_path: Path):
    """A model with 91 classes (COCO-id label space) takes the heads unchanged."""
    official = make_official_state_dict(official_listing['plain'], seed=2)
    path = save_official_file(tmp_path / 'official.pth', official, 'plain')
    model = build_official_r50('plain', num_classes=91)
    load_checkpoint(model, str(path), map_location='cpu', strict=True)
    assert torch.equal(model.bbox_head.cls_branches[3].weight, official['class_embed.3.weight'])
