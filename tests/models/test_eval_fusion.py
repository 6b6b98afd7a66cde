"""Eval-time fusion (``models/eval_fusion.py``): the inference copy computes what the modules
compute, and nothing a training run or a checkpoint sees changes."""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers.models import build_tiny_model, make_batch, perturb_

REPO_ROOT = Path(__file__).resolve().parents[2]


def _model() -> nn.Module:
    """A tiny model whose BatchNorm statistics are not the identity, so folding matters."""
    model = build_tiny_model('plain')
    perturb_(model, skip=())
    generator = torch.Generator().manual_seed(3)
    for module in model.backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model


def _raw_outputs(model: nn.Module, images: torch.Tensor):
    with torch.no_grad():
        return model._forward(images)


def test_eval_outputs_equal_the_unfused_model_in_float64() -> None:
    model = _model().double().eval()
    images = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(0)).double()
    fused = _raw_outputs(model, images)
    assert model._eval_fusion_cache.builds == 1
    model.eval_fusion = False
    unfused = _raw_outputs(model, images)
    for got, want in zip(fused, unfused):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # the copy really is another network: BatchNorm folded away, convolutions channels-last
    backbone = model._eval_fusion_cache.get(model.backbone, model.neck, model)[0]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_test_step_predictions_equal_the_unfused_model_in_float32() -> None:
    model = _model().eval()
    data = make_batch(model, training=False)
    model.predict(data['inputs'], copy.deepcopy(data['data_samples']))
    assert model._eval_fusion_cache.builds == 0  # predict with gradients enabled: the modules
    with torch.no_grad():
        fused = model.predict(data['inputs'], copy.deepcopy(data['data_samples']))
    assert model._eval_fusion_cache.builds == 1
    model.eval_fusion = False
    with torch.no_grad():
        unfused = model.predict(data['inputs'], copy.deepcopy(data['data_samples']))
    for got, want in zip(fused, unfused):
        torch.testing.assert_close(
            got.pred_instances.bboxes, want.pred_instances.bboxes, rtol=0, atol=1e-3
        )
        torch.testing.assert_close(
            got.pred_instances.scores, want.pred_instances.scores, rtol=0, atol=1e-5
        )


def test_test_step_runs_without_gradients_and_uses_the_copy() -> None:
    from mmdet.testing import demo_mm_inputs

    model = _model().eval()
    packed = demo_mm_inputs(batch_size=1, image_shapes=[(3, 64, 64)], num_classes=3)
    results = model.test_step(packed)  # gradients enabled around it, as in a user's script
    assert model._eval_fusion_cache.builds == 1
    assert not results[0].pred_instances.scores.requires_grad


def test_state_dict_parameters_and_modules_are_untouched() -> None:
    model = _model()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    names = [name for name, _ in model.named_parameters()]
    modules = [name for name, _ in model.named_modules()]
    model.eval()
    _raw_outputs(model, torch.randn(1, 3, 64, 64))
    model.train()
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
        assert after[key].is_contiguous(), key  # the originals keep their memory format
    assert [name for name, _ in model.named_parameters()] == names
    assert [name for name, _ in model.named_modules()] == modules
    # a pickled / deep-copied model carries no copy
    assert copy.deepcopy(model)._eval_fusion_cache.builds == 0


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, data: dict) -> None:
    model.train()
    losses = model.loss(data['inputs'], copy.deepcopy(data['data_samples']))
    optimizer.zero_grad()
    sum(value for key, value in losses.items() if 'loss' in key).backward()
    optimizer.step()


def _model_with(eval_fusion: bool) -> nn.Module:
    from mmdet.registry import MODELS

    from tests.helpers.models import init_weights_quietly, tiny_model_cfg

    torch.manual_seed(0)
    model = MODELS.build(dict(tiny_model_cfg('plain'), eval_fusion=eval_fusion))
    init_weights_quietly(model)
    return model


def test_training_steps_with_validation_are_bit_identical_with_fusion() -> None:
    models = {fusion: _model_with(fusion) for fusion in (True, False)}
    optimizers = {
        fusion: torch.optim.AdamW(model.parameters(), lr=1e-3) for fusion, model in models.items()
    }
    data = make_batch(models[True])
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    cache = models[True]._eval_fusion_cache
    for step in range(2):
        outputs = {}
        for fusion, model in models.items():
            _train_step(model, optimizers[fusion], data)
            model.eval()  # a validation round between training steps
            outputs[fusion] = _raw_outputs(model, images)
        assert cache.builds == step + 1  # rebuilt after each optimizer step, not reused stale
        for got, want in zip(outputs[True], outputs[False]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    _raw_outputs(models[True], images)
    assert cache.builds == 2  # unchanged weights: the copy is reused
    for (name, fused_param), unfused_param in zip(
        models[True].named_parameters(), models[False].parameters()
    ):
        assert torch.equal(fused_param, unfused_param), name


def test_load_state_dict_makes_the_copy_stale() -> None:
    model = _model().eval()
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    _raw_outputs(model, images)
    other = _model_with(False)
    model.load_state_dict(other.state_dict())
    fused = _raw_outputs(model, images)
    assert model._eval_fusion_cache.builds == 2
    other.eval()
    for got, want in zip(fused, _raw_outputs(other, images)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_runner_validation_inside_a_short_training(coco_photos: Path, tmp_path: Path) -> None:
    """mmengine's train loop with a validation round every iteration: it trains, validates on
    the fused copy, trains again, and the weights match a run with eval_fusion=False."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    weights = {}
    for fusion in (True, False):
        cfg = Config.fromfile(str(REPO_ROOT / 'tests' / 'helpers' / 'tiny_deformdetr_coco.py'))
        for loader in (cfg.train_dataloader, cfg.val_dataloader):
            loader.dataset.data_root = f'{coco_photos}/'
        cfg.val_dataloader.dataset.indices = 2
        cfg.test_dataloader = cfg.val_dataloader
        cfg.val_evaluator.ann_file = str(coco_photos / 'annotations' / 'instances.json')
        cfg.test_evaluator = cfg.val_evaluator
        cfg.train_cfg.update(max_iters=2, val_begin=1, val_interval=1)
        cfg.model.eval_fusion = fusion
        cfg.work_dir = str(tmp_path / str(fusion))
        runner = Runner.from_cfg(cfg)
        runner.train()
        model = runner.model
        assert model._eval_fusion_cache.builds == (2 if fusion else 0)
        weights[fusion] = {key: value.clone() for key, value in model.state_dict().items()}
    for key, value in weights[True].items():
        assert torch.equal(value, weights[False][key]), key
