"""``--precision fp32|bf16|auto`` (``engine/inference_precision.py``): the decision, the tools'
arguments, and what runs in which dtype."""

import argparse
import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from mmdet_deformdetr.engine import inference_precision
from mmdet_deformdetr.engine.inference_precision import (
    add_precision_argument,
    apply_precision_to_config,
    inference_autocast,
    resolve_precision,
)
from tests.helpers.models import build_tiny_model
from tests.helpers.tools import REPO_ROOT, TINY_CONFIG


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_precision_argument(parser)
    return parser.parse_args(list(argv))


def test_argument_defaults_to_fp32_and_refuses_other_values() -> None:
    assert _parse().precision == 'fp32'
    assert _parse('--precision', 'bf16').precision == 'bf16'
    with pytest.raises(SystemExit):
        _parse('--precision', 'fp16')


@pytest.mark.parametrize(
    'native, verified, expected',
    [(True, True, 'bf16'), (True, False, 'fp32'), (False, True, 'fp32')],
)
def test_auto_needs_native_bf16_and_verified_accuracy(native, verified, expected) -> None:
    precision, reason = resolve_precision(
        'auto', 'cpu', native_bf16=native, accuracy_verified=verified
    )
    assert precision == expected
    assert reason.startswith('auto')


def test_auto_reads_the_cpu_from_cpu_amp_and_is_fp32_when_unknown(monkeypatch) -> None:
    monkeypatch.setattr(inference_precision, 'cpu_bf16_support', lambda: (None, 'no flags'))
    assert resolve_precision('auto', 'cpu', accuracy_verified=True)[0] == 'fp32'
    monkeypatch.setattr(inference_precision, 'cpu_bf16_support', lambda: (True, 'amx_bf16'))
    assert resolve_precision('auto', 'cpu', accuracy_verified=True)[0] == 'bf16'


def test_auto_needs_the_map_evidence() -> None:
    assert resolve_precision('auto', 'cpu', native_bf16=True, accuracy_verified=False)[0] == 'fp32'
    # the demo model's bf16 mAP is within the bound (docs/performance.md): auto may choose bf16
    assert inference_precision.BF16_ACCURACY_VERIFIED is True
    assert resolve_precision('auto', 'cpu', native_bf16=True)[0] == 'bf16'
    assert resolve_precision('auto', 'cpu', native_bf16=False)[0] == 'fp32'


def test_explicit_choices_and_gpus() -> None:
    assert resolve_precision('fp32', 'cpu')[0] == 'fp32'
    assert resolve_precision('bf16', 'cpu', native_bf16=True)[0] == 'bf16'
    assert resolve_precision('auto', 'cuda', native_bf16=True, accuracy_verified=True)[0] == 'fp32'
    with pytest.raises(ValueError, match='test_cfg.fp16'):
        resolve_precision('bf16', 'cuda')
    with pytest.raises(ValueError, match='precision must be'):
        resolve_precision('half', 'cpu')


def test_bf16_autocast_reaches_the_model_and_the_attention_stays_float32() -> None:
    from mmdet_deformdetr.models.layers import MSDeformAttn
    from mmdet_deformdetr.ops import ms_deform_attn

    model = build_tiny_model('plain').eval()
    seen = {'linear': set(), 'attention_inputs': set()}
    linear = model.transformer.encoder.layers[0].linear1
    linear.register_forward_hook(lambda module, args, out: seen['linear'].add(out.dtype))
    original_run = ms_deform_attn._run

    def recording_run(impl, value, shapes, starts, locations, weights, step):
        seen['attention_inputs'].update({value.dtype, locations.dtype, weights.dtype})
        return original_run(impl, value, shapes, starts, locations, weights, step)

    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        ms_deform_attn._run = recording_run
        with torch.no_grad(), inference_autocast('bf16'):
            scores, boxes = model._forward(images)
    finally:
        ms_deform_attn._run = original_run
    assert seen['linear'] == {torch.bfloat16}
    assert seen['attention_inputs'] == {torch.float32}
    assert any(isinstance(m, MSDeformAttn) for m in model.modules())
    with torch.no_grad(), inference_autocast('fp32'):
        fp32_scores, _ = model._forward(images)
    assert fp32_scores.dtype == torch.float32
    torch.testing.assert_close(scores.float(), fp32_scores, rtol=0, atol=0.1)


def test_fp16_test_cfg_autocasts_in_mmengine_test_loop_on_cpu() -> None:
    """mmengine's ``TestLoop(fp16=True)`` on a CPU: its autocast is bfloat16, the model's
    linear layers see it and predictions come back float32."""
    from mmdet.testing import demo_mm_inputs
    from mmengine.runner.amp import autocast

    model = build_tiny_model('plain').eval()
    seen = set()
    linear = model.transformer.encoder.layers[0].linear1
    linear.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
    packed = demo_mm_inputs(batch_size=1, image_shapes=[(3, 64, 64)], num_classes=3)
    with autocast(enabled=True):  # what TestLoop.run_iter enters with fp16=True
        results = model.test_step(copy.deepcopy(packed))
    assert seen == {torch.bfloat16}
    assert results[0].pred_instances.bboxes.dtype == torch.float32
    assert results[0].pred_instances.scores.dtype == torch.float32


def test_apply_to_config_sets_mmengine_test_loop_fp16() -> None:
    from mmengine.config import Config

    cfg = Config(dict(test_cfg=dict(type='TestLoop')))
    apply_precision_to_config(cfg, 'bf16')
    assert cfg.test_cfg.type == 'TestLoop' and cfg.test_cfg.fp16 is True
    apply_precision_to_config(cfg, 'fp32')
    assert cfg.test_cfg.fp16 is False


def _load_tool(relative: str) -> ModuleType:
    path = REPO_ROOT / relative
    spec = importlib.util.spec_from_file_location(f'deformdetr_{Path(relative).stem}', path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def test_test_tool_precision_reaches_the_test_loop(monkeypatch) -> None:
    tool = _load_tool('tools/test.py')
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(
        sys, 'argv', ['test.py', str(TINY_CONFIG), 'ckpt.pth', '--precision', 'bf16']
    )
    assert tool.build_cfg(tool.parse_args()).test_cfg.fp16 is True
    monkeypatch.setattr(sys, 'argv', ['test.py', str(TINY_CONFIG), 'ckpt.pth'])
    assert tool.build_cfg(tool.parse_args()).test_cfg.fp16 is False


@pytest.mark.parametrize(
    'tool_path, argv',
    [
        ('tools/infer.py', ['img.jpg', 'config.py', 'ckpt.pth']),
        ('tools/analysis_tools/benchmark_fps.py', ['config.py']),
    ],
)
def test_other_tools_take_the_argument(tool_path: str, argv: list, monkeypatch) -> None:
    tool = _load_tool(tool_path)
    monkeypatch.setattr(sys, 'argv', ['tool.py', *argv, '--precision', 'auto'])
    assert tool.parse_args().precision == 'auto'
