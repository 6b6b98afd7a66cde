"""CPUAutocastOptimWrapper (``tools/train.py --amp`` without CUDA), its selection, and its
warning on CPUs without native bfloat16."""

import logging

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper, build_optim_wrapper

from mmdet_deformdetr.engine import (
    CPUAutocastOptimWrapper,
    cpu_amp,
    cpu_bf16_support,
    select_amp_optim_wrapper,
)
from tests.helpers.tiers import slow_except
from tests.helpers.tools import TINY_CONFIG


def test_mmengine_amp_wrapper_refuses_cpu():
    """The problem being fixed (skipped where CUDA is available)."""
    if torch.cuda.is_available():
        pytest.skip('AmpOptimWrapper works with CUDA')
    from mmengine.optim import AmpOptimWrapper

    with pytest.raises(Exception, match='(?i)cuda|available'):
        AmpOptimWrapper(optimizer=torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))


@pytest.mark.parametrize(
    'cuda, expected', [(True, 'AmpOptimWrapper'), (False, 'CPUAutocastOptimWrapper')]
)
def test_select_amp_optim_wrapper(cuda, expected):
    cfg = Config.fromfile(str(TINY_CONFIG))
    assert select_amp_optim_wrapper(cfg, cuda_available=cuda) == expected
    assert cfg.optim_wrapper.type == expected
    assert ('loss_scale' in cfg.optim_wrapper) == cuda  # bf16 needs no loss scaling
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=0.1, norm_type=2)  # the rest is kept


def test_optim_context_autocasts_to_bf16_and_keeps_fp32_state():
    linear = torch.nn.Linear(8, 4)
    optim_wrapper = CPUAutocastOptimWrapper(torch.optim.SGD(linear.parameters(), lr=0.1))
    assert isinstance(optim_wrapper, OptimWrapper)
    before = linear.weight.detach().clone()
    with optim_wrapper.optim_context(linear):
        assert torch.is_autocast_enabled('cpu')
        output = linear(torch.randn(3, 8))
    assert not torch.is_autocast_enabled('cpu')  # restored on exit
    assert output.dtype == torch.bfloat16
    optim_wrapper.backward(output.float().pow(2).mean())
    assert linear.weight.dtype == linear.weight.grad.dtype == torch.float32
    optim_wrapper.step()
    assert not torch.equal(before, linear.weight)


@pytest.mark.cuda
def test_gpu_model_is_refused():
    if not torch.cuda.is_available():
        pytest.skip('needs CUDA')
    linear = torch.nn.Linear(2, 2).cuda()
    optim_wrapper = CPUAutocastOptimWrapper(torch.optim.SGD(linear.parameters(), lr=0.1))
    with pytest.raises(ValueError, match='AmpOptimWrapper'):
        with optim_wrapper.optim_context(linear):
            pass


@pytest.mark.parametrize(
    'variant', slow_except(['plain', 'refine', 'two_stage'], lambda variant: variant == 'plain')
)
def test_tiny_deformdetr_trains_under_cpu_autocast(variant):
    """Two train_step calls of a tiny DeformDETR with the wrapper built from the config as the
    Runner builds it (paramwise lr, gradient clipping). Every trainable parameter must move: one
    without a gradient would also break DDP (find_unused_parameters=False)."""
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs

    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.model.update(with_box_refine=variant != 'plain', as_two_stage=variant == 'two_stage')
    cfg.model.bbox_head.num_classes = 3
    select_amp_optim_wrapper(cfg, cuda_available=False)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert isinstance(optim_wrapper, CPUAutocastOptimWrapper)

    # record the dtype the transformer's linear layers compute in
    linear_dtypes = set()
    for module in model.transformer.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda _m, _i, out: linear_dtypes.add(out.dtype))
    trainable = {
        name: param.detach().clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }
    for step in range(2):
        torch.manual_seed(step)
        data = demo_mm_inputs(
            batch_size=2, image_shapes=[(3, 64, 80), (3, 48, 64)], num_items=[3, 2], num_classes=3
        )
        log_vars = model.train_step(data, optim_wrapper)
        assert all(torch.isfinite(value) for value in log_vars.values()), log_vars
    assert torch.bfloat16 in linear_dtypes
    changed = [
        name
        for name, param in model.named_parameters()
        if name in trainable and not torch.equal(trainable[name], param)
    ]
    # every trainable parameter was updated (AdamW moves any parameter with a gradient)
    assert sorted(changed) == sorted(trainable)
    assert all(param.dtype == torch.float32 for param in model.parameters())


EPYC_AVX2 = 'processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma bmi2 sha_ni\n'
XEON_AMX = 'processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n'
ARM_BF16 = 'processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n'
ARM_OLD = 'processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n'


@pytest.mark.parametrize(
    'cpuinfo, capability, environ, native, evidence',
    [
        (EPYC_AVX2, 'AVX2', {}, False, '/proc/cpuinfo lists none of amx_bf16, avx512_bf16, bf16'),
        (
            XEON_AMX,
            'AVX512',
            {},
            True,
            '/proc/cpuinfo lists amx_bf16, avx512_bf16; torch CPU capability AVX512',
        ),
        # flags there, but torch (ATEN_CPU_CAPABILITY=avx2) or oneDNN do not use them
        (XEON_AMX, 'AVX2', {}, False, 'capability AVX2, which has no bfloat16 kernels'),
        (XEON_AMX, 'AVX512', dict(ONEDNN_MAX_CPU_ISA='AVX2'), False, 'oneDNN limited to AVX2'),
        (XEON_AMX, 'AVX512', dict(ONEDNN_MAX_CPU_ISA='AVX512_CORE_AMX'), True, 'lists amx_bf16'),
        (ARM_BF16, 'DEFAULT', {}, True, '/proc/cpuinfo lists bf16'),
        (ARM_OLD, 'DEFAULT', {}, False, 'lists none of'),
        ('processor\t: 0\n', 'AVX2', {}, None, 'no CPU flags in /proc/cpuinfo'),
    ],
)
def test_cpu_bf16_support(cpuinfo, capability, environ, native, evidence):
    found, words = cpu_bf16_support(cpuinfo, capability, environ)
    assert found is native
    assert evidence in words and 'torch CPU capability' in words


@pytest.mark.parametrize('native, warned', [(False, True), (True, False), (None, False)])
def test_wrapper_warns_on_a_cpu_without_native_bf16(monkeypatch, native, warned):
    logged = []
    monkeypatch.setattr(cpu_amp, 'cpu_bf16_support', lambda: (native, 'flags x'))
    monkeypatch.setattr(
        cpu_amp, 'print_log', lambda message, **kwargs: logged.append((message, kwargs['level']))
    )
    CPUAutocastOptimWrapper(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))
    assert bool(logged) == warned
    if warned:
        message, level = logged[0]
        assert level == logging.WARNING
        assert 'SLOWER than float32 on this CPU' in message and '(flags x)' in message
        assert 'Train without --amp' in message
