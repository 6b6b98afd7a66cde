"""The offline converter tool, the detector's load hook, and the deformdetr:// loader scheme."""

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import load_checkpoint

from mmdet_deformdetr.checkpoint import convert_checkpoint_pre_hook
from tests.helpers.checkpoints import (
    build_official_r50,
    make_official_state_dict,
    save_official_file,
)
from tests.helpers.models import r50_model_cfg, tiny_model_cfg


def test_detector_registers_the_conversion_hook():
    """DeformDETR.__init__ must register convert_checkpoint_pre_hook (2 lines, see load_hook.py);
    without it load_from / resume of official, mmdet or HF files does not convert."""
    from mmdet.registry import MODELS

    model = MODELS.build(tiny_model_cfg('plain'))
    hooks = [getattr(h, 'hook', h) for h in model._load_state_dict_pre_hooks.values()]
    assert convert_checkpoint_pre_hook in hooks


@pytest.mark.slow
def test_tool_converts_official_file_and_reports(
    official_listing, converter, tmp_path: Path, capsys
):
    official = make_official_state_dict(official_listing['refine'], seed=3)
    src = save_official_file(tmp_path / 'official.pth', official, 'refine')
    dst = tmp_path / 'converted.pth'
    config = tmp_path / 'refine_cfg.py'
    Config(dict(model=r50_model_cfg('refine').to_dict())).dump(str(config))
    assert converter.main([str(src), str(dst), '--config', str(config)]) == 0
    report = capsys.readouterr().out
    assert 'missing in checkpoint: 0' in report and 'unexpected for model: 0' in report
    assert 'detected format: official Deformable-DETR' in report
    assert 'variant: refine, 4 feature level(s)' in report
    assert 'dropped: 36' in report  # transformer.decoder.bbox_embed.{0..5}.layers.{0,1,2}.{w,b}
    assert 'remapped:' in report and 'filled:' in report
    assert 'classification heads remapped from 91 COCO-id channels' in report

    saved = torch.load(dst, map_location='cpu', weights_only=True)
    assert saved['meta']['source_format'] == 'official Deformable-DETR'
    assert saved['meta']['official_args.with_box_refine'] is True
    model = build_official_r50('refine')
    # the converted file needs no hook: our keys
    model._load_state_dict_pre_hooks.clear()
    load_checkpoint(model, str(dst), map_location='cpu', strict=True)
    assert torch.equal(model.transformer.level_embed, official['transformer.level_embed'])


def test_tool_refuses_untrusted_file(converter, tmp_path: Path):
    from mmdet_deformdetr.checkpoint import UntrustedCheckpointError

    src = tmp_path / 'odd.pth'
    torch.save({'model': {'w': torch.zeros(1)}, 'extra': Path('/x')}, src)
    with pytest.raises(UntrustedCheckpointError, match='--trust-global'):
        converter.main([str(src), str(tmp_path / 'out.pth')])
    with pytest.raises(ValueError, match='not a Deformable DETR checkpoint'):
        # trusted now, but the weights are not a Deformable DETR at all
        converter.main([str(src), str(tmp_path / 'out.pth'), '--trust-global', 'pathlib.PosixPath'])


def test_deformdetr_scheme_reads_official_file(official_listing, tmp_path: Path):
    official = make_official_state_dict(official_listing['plain'], seed=4)
    src = save_official_file(tmp_path / 'official.pth', official, 'plain')
    model = build_official_r50('plain')
    load_checkpoint(model, f'deformdetr://{src}', map_location='cpu', strict=True)
    assert torch.equal(model.transformer.query_embed.weight, official['query_embed.weight'])
