"""Official Deformable-DETR state dicts and files, built from the key/shape listing in
``tests/data/official_deformable_detr_state_dict.json`` (random weights, no download)."""

import argparse
from pathlib import Path
from typing import Dict

import torch

#: COCO category id of mmdet class c, written out here independently of the package's table
COCO_IDS = [
    i
    for lo, hi in [
        (1, 11),
        (13, 25),
        (27, 28),
        (31, 44),
        (46, 65),
        (67, 67),
        (70, 70),
        (72, 82),
        (84, 90),
    ]
    for i in range(lo, hi + 1)
]

#: the R-50 models of the official builds in the listing: (variant flags, model overrides)
OFFICIAL_BUILDS: Dict[str, tuple] = {
    'plain': ('plain', None),
    'refine': ('refine', None),
    'two_stage': ('two_stage', None),
    'single_scale': (
        'plain',
        dict(
            num_feature_levels=1,
            backbone=dict(out_indices=(3,)),
            neck=dict(in_channels=[2048], num_outs=1),
        ),
    ),
}


def build_official_r50(build: str, num_classes: int = 80) -> torch.nn.Module:
    """Our R-50 DeformDETR (primitive config) with the structure of an official build."""
    from tests.helpers.models import build_r50

    variant, overrides = OFFICIAL_BUILDS[build]
    return build_r50(variant, num_classes, overrides)


def make_official_state_dict(listing: Dict[str, list], seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random tensors with the listed keys and shapes, shared as the official code shares them:
    without refinement ``class_embed.i``/``bbox_embed.i`` are one module; the
    ``transformer.decoder.*_embed`` entries are aliases of the top-level heads."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, shape in listing.items():
        tensor = torch.randn(shape, generator=generator)
        if key.endswith('running_var'):
            tensor = tensor.abs() + 0.5
        state_dict[key] = tensor
    refine = any(k.startswith('transformer.decoder.bbox_embed.') for k in listing)
    for key in listing:
        head, _, rest = key.partition('.')
        if head in ('class_embed', 'bbox_embed') and not refine:
            index, _, param = rest.partition('.')
            state_dict[key] = state_dict[f'{head}.0.{param}']
        if key.startswith(('transformer.decoder.class_embed.', 'transformer.decoder.bbox_embed.')):
            state_dict[key] = state_dict[key[len('transformer.decoder.') :]]
    return state_dict


def save_official_file(path: Path, state_dict: Dict[str, torch.Tensor], build: str) -> Path:
    """``torch.save`` laid out as the official train script does (args is an argparse.Namespace)."""
    args = argparse.Namespace(
        lr=2e-4,
        with_box_refine=build in ('refine', 'two_stage'),
        two_stage=build == 'two_stage',
        num_feature_levels=1 if build == 'single_scale' else 4,
        enc_n_points=4,
        dec_n_points=4,
        num_queries=300,
        dataset_file='coco',
        lr_backbone_names=['backbone.0'],
    )
    torch.save(
        {
            'model': state_dict,
            'optimizer': {'state': {}, 'param_groups': []},
            'lr_scheduler': {'step_size': 40, 'last_epoch': 50},
            'epoch': 49,
            'args': args,
        },
        path,
    )
    return path
