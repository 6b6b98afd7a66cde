"""GroupedOptimWrapperConstructor: mmengine's paramwise settings in few param groups, the same
update number for number."""

import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from torch import nn

import mmdet_deformdetr  # noqa: F401  (registers the constructor)
from mmdet_deformdetr.engine import merge_param_groups
from tests.helpers.tools import TINY_CONFIG


class _Toy(nn.Module):
    """Parameters the recipe's custom keys and mmengine's norm / bias multipliers tell apart."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.sampling_offsets = nn.Linear(4, 6)
        self.head = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x).mean((2, 3))
        return self.head(features).sum() + self.sampling_offsets(features).sum()


def _optim_cfg(constructor: str, fused: bool = False, clip: bool = True) -> dict:
    return dict(
        type='OptimWrapper',
        constructor=constructor,
        optimizer=dict(type='AdamW', lr=1e-2, weight_decay=1e-2, fused=fused),
        clip_grad=dict(max_norm=0.1, norm_type=2) if clip else None,
        paramwise_cfg=dict(
            norm_decay_mult=0.0,
            bias_lr_mult=2.0,
            custom_keys={
                'backbone': dict(lr_mult=0.1),
                'sampling_offsets': dict(lr_mult=0.1),
            },
        ),
    )


def _groups_by_param(optimizer: torch.optim.Optimizer) -> dict:
    """id(param) -> the settings of its group (every key but params)."""
    table = {}
    for group in optimizer.param_groups:
        settings = {k: v for k, v in group.items() if k != 'params'}
        for param in group['params']:
            table[id(param)] = settings
    return table


def test_merge_keeps_settings_and_order():
    a, b, c, d = (nn.Parameter(torch.zeros(1)) for _ in range(4))
    groups = [
        dict(params=[a], lr=0.1),
        dict(params=[b], lr=0.1, weight_decay=0.0),
        dict(params=[c], lr=0.1),
        dict(params=[d], lr=0.1, weight_decay=0.0),
    ]
    merged = merge_param_groups(groups)
    assert [[id(p) for p in g['params']] for g in merged] == [[id(a), id(c)], [id(b), id(d)]]
    assert [{k: v for k, v in g.items() if k != 'params'} for g in merged] == [
        dict(lr=0.1),
        dict(lr=0.1, weight_decay=0.0),
    ]


def test_same_settings_per_parameter_as_mmengine():
    model = _Toy()
    default = build_optim_wrapper(model, _optim_cfg('DefaultOptimWrapperConstructor'))
    grouped = build_optim_wrapper(model, _optim_cfg('GroupedOptimWrapperConstructor'))
    assert len(default.optimizer.param_groups) == len(list(model.parameters()))
    # backbone conv weight / bias, BN; offsets weight / bias; head weights, biases, LayerNorm
    assert len(grouped.optimizer.param_groups) < len(default.optimizer.param_groups)
    assert _groups_by_param(grouped.optimizer) == _groups_by_param(default.optimizer)
    seen = [id(p) for g in grouped.optimizer.param_groups for p in g['params']]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each once


@pytest.mark.parametrize('clip', [False, True])
@pytest.mark.parametrize('fused', [False, True])
def test_training_is_the_same(fused, clip):
    """Several AdamW steps under a warm-up scheduler give the same weights and state: bitwise
    without clipping; with it, to float32 rounding (the clipping norm sums the per-parameter norms
    in group order, so its last bit can differ)."""
    from mmengine.optim.scheduler import LinearLR

    names = ('DefaultOptimWrapperConstructor', 'GroupedOptimWrapperConstructor')
    torch.manual_seed(0)
    models = {name: _Toy() for name in names}
    models[names[1]].load_state_dict(models[names[0]].state_dict())
    wrappers = {n: build_optim_wrapper(m, _optim_cfg(n, fused, clip)) for n, m in models.items()}
    schedulers = [LinearLR(w, start_factor=0.1, by_epoch=False, end=3) for w in wrappers.values()]
    for x in torch.randn(5, 2, 3, 8, 8):
        for name, model in models.items():
            wrappers[name].update_params(model(x))
        for scheduler in schedulers:
            scheduler.step()

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        if not clip:
            return torch.equal(a, b)
        # relative to the tensor's scale: exp_avg mixes terms of both signs, so an element that
        # cancels to ~0 keeps the absolute, not the relative, rounding of its terms
        return torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))

    default, grouped = (models[n] for n in names)
    for (key, a), b in zip(default.state_dict().items(), grouped.state_dict().values()):
        assert same(a, b), key
    states = [wrappers[n].optimizer.state for n in names]
    for a, b in zip(default.parameters(), grouped.parameters()):
        for key in ('exp_avg', 'exp_avg_sq'):
            assert same(states[0][a][key], states[1][b][key]), key


def test_demo_and_paper_configs_use_it():
    """The recipe's custom keys give 3 groups on the demo model: the base lr, 0.1x (sampling
    offsets and reference points) and the backbone's explicit 1.0x (mmengine keeps lr_mult)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    demo = Config.fromfile('configs/demo/deformable-detr-refine-twostage_r18_shapes.py')
    assert demo.optim_wrapper.constructor == 'GroupedOptimWrapperConstructor'
    model = MODELS.build(copy.deepcopy(demo.model))
    wrapper = build_optim_wrapper(model, demo.optim_wrapper)
    lrs = sorted(g['lr'] for g in wrapper.optimizer.param_groups)
    base = demo.optim_wrapper.optimizer.lr
    assert lrs == pytest.approx([0.1 * base, base, base])  # lr_mult (0.1 or 1.0) stays a group key
    tiny = Config.fromfile(str(TINY_CONFIG))
    assert tiny.optim_wrapper.constructor == 'GroupedOptimWrapperConstructor'


@pytest.mark.parametrize('verbose', [False, True])
def test_one_line_per_group_on_the_screen_every_parameter_in_the_log_file(
    verbose, tmp_path, monkeypatch
):
    """mmengine logs a line per parameter and setting (and per frozen parameter); the screen
    gets one line per merged group and one for the frozen ones, the log file keeps mmengine's
    lines; --verbose (DEFORMDETR_VERBOSE=1) shows them on the screen too."""
    import io

    from mmengine.logging import MMLogger

    from mmdet_deformdetr.console.quiet import screen_handlers

    if verbose:
        monkeypatch.setenv('DEFORMDETR_VERBOSE', '1')
    else:
        monkeypatch.delenv('DEFORMDETR_VERBOSE', raising=False)
    log_file = tmp_path / 'run.log'
    logger = MMLogger.get_instance(f'grouped_optim_lines_{verbose}', log_file=str(log_file))
    screen = io.StringIO()
    for handler in screen_handlers(logger):
        handler.setStream(screen)
    model = _Toy()
    model.backbone[1].weight.requires_grad_(False)  # a frozen BN weight
    wrapper = build_optim_wrapper(model, _optim_cfg('GroupedOptimWrapperConstructor'))
    for handler in logger.handlers:
        handler.flush()

    groups = len(wrapper.optimizer.param_groups)
    shown = screen.getvalue()
    assert shown.count(' param group ') == groups
    assert 'param group 0: ' in shown and 'backbone (' in shown and 'sampling_offsets (2)' in shown
    assert 'not optimised (requires_grad=False): 1 tensors' in shown
    assert ('paramwise_options -- ' in shown) == verbose
    assert ('backbone.1.weight is skipped since its requires_grad=False' in shown) == verbose
    logged = log_file.read_text()
    assert 'paramwise_options -- sampling_offsets.weight:lr_mult=0.1' in logged
    assert 'backbone.1.weight is skipped since its requires_grad=False' in logged
