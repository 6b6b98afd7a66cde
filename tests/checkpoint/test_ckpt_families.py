"""The table of checkpoint families: each built-in family is recognised from its container, and a
fourth family needs nothing but a table entry (registered here, in the test only) to load through
load_checkpoint, deformdetr:// and the converter tool, as docs/checkpoints.md "Adding a checkpoint
family" says."""

from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import pytest
import torch
from mmengine.runner import load_checkpoint

from mmdet_deformdetr.checkpoint import (
    FAMILIES,
    CheckpointFamily,
    ConversionReport,
    UnknownCheckpointError,
    identify,
)
from tests.helpers.models import build_tiny_model
from tests.helpers.tiers import slow_except

# --- a toy family: keys spelled with '/', its own container ---------------------------------


def toy_detect(state_dict: Mapping) -> bool:
    return 'toy/transformer/level_embed' in state_dict


def toy_unwrap(checkpoint: Mapping) -> Optional[Tuple[Mapping, dict]]:
    if 'toy_weights' not in checkpoint:
        return None
    return checkpoint['toy_weights'], dict(checkpoint['toy_info'])


def toy_to_ours(
    state_dict: Mapping[str, torch.Tensor], report: ConversionReport
) -> Dict[str, torch.Tensor]:
    converted = {}
    for key, value in state_dict.items():
        converted[key[len('toy/') :].replace('/', '.')] = value
        report.record(key, key[len('toy/') :].replace('/', '.'))
    return converted


@pytest.fixture
def toy_family(monkeypatch) -> CheckpointFamily:
    family = CheckpointFamily('toy', toy_detect, toy_to_ours, toy_unwrap)
    monkeypatch.setitem(FAMILIES, 'toy', family)
    return family


def save_toy_file(model: torch.nn.Module, path: Path) -> Path:
    torch.save(
        {
            'toy_weights': {'toy/' + k.replace('.', '/'): v for k, v in model.state_dict().items()},
            'toy_info': {'epoch': 3},
        },
        path,
    )
    return path


@pytest.mark.parametrize(
    'variant', slow_except(['plain', 'refine'], lambda variant: variant == 'refine')
)
def test_toy_family_loads_through_load_checkpoint(variant, toy_family, tmp_path: Path):
    source = build_tiny_model(variant)
    with torch.no_grad():
        for param in source.parameters():
            param.add_(0.01)
    path = save_toy_file(source, tmp_path / 'toy.pth')
    target = build_tiny_model(variant)
    load_checkpoint(target, str(path), map_location='cpu', strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    load_checkpoint(build_tiny_model(variant), f'deformdetr://{path}', strict=True)


def test_toy_family_through_the_converter_tool(toy_family, converter, tmp_path: Path, capsys):
    path = save_toy_file(build_tiny_model('plain'), tmp_path / 'toy.pth')
    assert converter.main([str(path), str(tmp_path / 'ours.pth'), '--num-classes', '3']) == 0
    assert 'detected format: toy' in capsys.readouterr().out
    saved = torch.load(tmp_path / 'ours.pth', map_location='cpu')
    assert saved['meta']['source_format'] == 'toy' and saved['meta']['epoch'] == 3
    assert 'transformer.level_embed' in saved['state_dict']


def test_without_its_entry_the_toy_file_is_unknown(converter, tmp_path: Path):
    path = save_toy_file(build_tiny_model('plain'), tmp_path / 'toy.pth')
    assert identify(torch.load(path)) is None
    with pytest.raises(UnknownCheckpointError) as error:
        converter.main([str(path), str(tmp_path / 'out.pth')])
    message = str(error.value)
    assert message.startswith(f'{path} is not a Deformable DETR checkpoint of a known family')
    for name in FAMILIES:  # the list in the message is the table's
        assert name in message


def _official(listing: Dict) -> dict:
    from tests.helpers.checkpoints import make_official_state_dict

    return make_official_state_dict(listing['plain'])


@pytest.mark.parametrize(
    'container, expected',
    [
        (
            lambda listing, ours: {'model': _official(listing), 'args': None, 'epoch': 4},
            'official Deformable-DETR',
        ),
        (lambda listing, ours: _official(listing), 'official Deformable-DETR'),
        (lambda listing, ours: {'meta': {'epoch': 2}, 'state_dict': ours}, 'mmdet_deformdetr'),
        (lambda listing, ours: {f'module.{k}': v for k, v in ours.items()}, 'mmdet_deformdetr'),
        (
            lambda listing, ours: {'meta': {}, 'state_dict': {'level_embed': torch.zeros(4, 8)}},
            'mmdet 3.x DeformableDETR',
        ),
        (
            lambda listing, ours: {'model.level_embed': torch.zeros(4, 8)},
            'Hugging Face DeformableDetrForObjectDetection',
        ),
    ],
    ids=['official_file', 'official_bare', 'ours_mmengine', 'ours_ddp_prefix', 'mmdet', 'hf'],
)
def test_built_in_families_are_recognised(container, expected, official_listing):
    found = identify(container(official_listing, build_tiny_model('plain').state_dict()))
    assert found is not None and found.family.name == expected
    assert not any(k.startswith('module.') for k in found.state_dict)
