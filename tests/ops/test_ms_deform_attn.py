"""multi_scale_deformable_attn: parity with mmcv's reference, gradients, dispatch, precision."""

import types
from pathlib import Path
from typing import List, Sequence, Tuple

import pytest
import torch
from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
from torch import Tensor

from mmdet_deformdetr import ops
from mmdet_deformdetr.ops import cpu_kernel, ms_deform_attn
from mmdet_deformdetr.ops import multi_scale_deformable_attn as msda

# every implementation that runs on CPU tensors: a new one added to ops.IMPLS gets the parity,
# gradient and bad-index tests below without editing them
CPU_IMPLS = [impl for impl in ops.IMPLS if impl != 'cuda']

# (bs, num_queries, M, D, [(H, W) per level], K): D = 32/64/16 take the compile-time-D kernels,
# other D the generic one; single level and single point; non-square maps. The kernel copies value
# to a head-major layout when num_queries * L * K >= num_keys (the 'many_queries' cases), else it
# reads the caller's layout (decoder-like, the other cases).
CASES = {
    'many_queries': (2, 40, 2, 32, [(4, 5), (2, 3)], 2),
    'many_queries_generic_head_dims': (1, 30, 3, 6, [(3, 4), (1, 2)], 2),
    'three_levels': (2, 7, 3, 32, [(6, 4), (3, 5), (2, 2)], 2),
    'generic_head_dims': (1, 5, 2, 5, [(4, 7), (2, 3)], 3),
    'one_level_one_point': (2, 4, 2, 16, [(5, 3)], 1),
    'non_square_d64': (1, 6, 4, 64, [(3, 9), (9, 2)], 2),
}


def make_inputs(
    bs: int,
    num_queries: int,
    num_heads: int,
    head_dims: int,
    shapes: Sequence[Tuple[int, int]],
    num_points: int,
    dtype: torch.dtype = torch.float64,
    low: float = -0.3,
    high: float = 1.3,
    seed: int = 0,
) -> List[Tensor]:
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights.

    Locations are uniform in [low, high]: the default range puts ~27% of the points (partly or
    wholly) outside the map, on both sides.
    """
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    num_levels = len(shapes)
    value = torch.randn(
        bs, int(sizes.sum()), num_heads, head_dims, generator=generator, dtype=dtype
    )
    locations = low + (high - low) * torch.rand(
        bs, num_queries, num_heads, num_levels, num_points, 2, generator=generator, dtype=dtype
    )
    weights = torch.rand(
        bs, num_queries, num_heads, num_levels, num_points, generator=generator, dtype=dtype
    )
    return [value, spatial_shapes, level_start_index, locations, weights]


def forward_and_grads(
    fn, value: Tensor, locations: Tensor, weights: Tensor, seed: int = 1
) -> List[Tensor]:
    """``[output, d value, d locations, d weights]`` for a fixed random upstream gradient."""
    value, locations, weights = (
        t.detach().clone().requires_grad_() for t in (value, locations, weights)
    )
    output = fn(value, locations, weights)
    # Drawn in float64 and cast, so float32 and float64 runs see the same upstream gradient.
    upstream = torch.randn(
        output.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    ).to(output.device, output.dtype)
    return [output.detach(), *torch.autograd.grad(output, (value, locations, weights), upstream)]


def mmcv_fn(spatial_shapes: Tensor):
    return lambda v, loc, w: multi_scale_deformable_attn_pytorch(v, spatial_shapes, loc, w)


def our_fn(spatial_shapes: Tensor, level_start_index: Tensor, impl: str):
    return lambda v, loc, w: msda(v, spatial_shapes, level_start_index, loc, w, impl=impl)


@pytest.mark.parametrize('impl', CPU_IMPLS)
@pytest.mark.parametrize('case', list(CASES))
def test_float64_parity_with_mmcv(case: str, impl: str) -> None:
    value, shapes, starts, locations, weights = make_inputs(*CASES[case])
    expected = forward_and_grads(mmcv_fn(shapes), value, locations, weights)
    actual = forward_and_grads(our_fn(shapes, starts, impl), value, locations, weights)
    for name, got, want in zip(
        ['output', 'grad_value', 'grad_locations', 'grad_weights'], actual, expected
    ):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize(
    'bs,num_queries,num_heads,shapes,num_points',
    [
        (1, 12, 2, [(4, 5), (2, 3)], 2),  # 12 * 2 * 2 >= 26 keys: head-major copy
        (2, 3, 3, [(6, 4), (3, 5), (2, 2)], 2),  # caller's layout
        (2, 3, 2, [(5, 3)], 1),
    ],
)
def test_gradcheck_cpu_kernel(
    bs: int, num_queries: int, num_heads: int, shapes: List[Tuple[int, int]], num_points: int
) -> None:
    value, shapes, starts, locations, weights = make_inputs(
        bs, num_queries, num_heads, 4, shapes, num_points
    )
    inputs = tuple(t.requires_grad_() for t in (value, locations, weights))
    assert torch.autograd.gradcheck(our_fn(shapes, starts, 'cpu'), inputs, eps=1e-6, atol=1e-7)


def test_float32_matches_float64() -> None:
    inputs64 = make_inputs(*CASES['three_levels'])
    value, shapes, starts, locations, weights = inputs64
    want = forward_and_grads(our_fn(shapes, starts, 'cpu'), value, locations, weights)
    got = forward_and_grads(
        our_fn(shapes, starts, 'cpu'), value.float(), locations.float(), weights.float()
    )
    for got_t, want_t in zip(got, want):
        assert got_t.dtype == torch.float32
        torch.testing.assert_close(got_t.double(), want_t, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('low,high', [(-3.0, -1.0), (1.6, 4.0), (-1e30, -1e29)])
def test_points_outside_the_map_read_zero(low: float, high: float) -> None:
    value, shapes, starts, locations, weights = make_inputs(
        *CASES['three_levels'], low=low, high=high
    )
    for tensor in forward_and_grads(our_fn(shapes, starts, 'cpu'), value, locations, weights):
        assert torch.count_nonzero(tensor) == 0


def test_results_do_not_depend_on_thread_count() -> None:
    """grad_value is scattered by many queries; blocks own disjoint rows, so the result must be
    bitwise the same for any number of threads (a race would show up as a difference)."""
    value, shapes, starts, locations, weights = make_inputs(
        2, 200, 8, 32, [(12, 9), (6, 5)], 4, dtype=torch.float32, low=0.2, high=0.4
    )
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = forward_and_grads(our_fn(shapes, starts, 'cpu'), value, locations, weights)
        torch.set_num_threads(max(2, threads))
        multi = forward_and_grads(our_fn(shapes, starts, 'cpu'), value, locations, weights)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(single, multi):
        assert torch.equal(a, b)


def test_bf16_inputs_compute_in_float32() -> None:
    value, shapes, starts, locations, weights = make_inputs(
        *CASES['three_levels'], dtype=torch.float32
    )
    want = msda(value, shapes, starts, locations, weights)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = msda(value.bfloat16(), shapes, starts, locations.bfloat16(), weights.bfloat16())
    assert got.dtype == torch.bfloat16
    # Inputs were rounded to bf16 (value, and locations: up to ~0.5% of a map), output too.
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    'mutate,match',
    [
        (lambda x: x.__setitem__(0, x[0][:, :-1]), 'keys'),
        (lambda x: x.__setitem__(0, x[0][0]), r'value must be \(bs'),
        (lambda x: x.__setitem__(4, x[4][..., :-1]), 'attention_weights'),
        (lambda x: x.__setitem__(3, x[3][:, :, :1]), 'sampling_locations'),
        (lambda x: x.__setitem__(2, x[2][:-1]), 'level_start_index'),
        (lambda x: x.__setitem__(1, x[1].float()), 'spatial_shapes'),
    ],
)
def test_bad_inputs_raise(mutate, match: str) -> None:
    inputs = make_inputs(*CASES['three_levels'])
    mutate(inputs)
    with pytest.raises(ValueError, match=match):
        msda(*inputs)


def test_bad_impl_and_device_requests_raise() -> None:
    inputs = make_inputs(*CASES['one_level_one_point'])
    with pytest.raises(ValueError, match='impl must be one of'):
        msda(*inputs, impl='triton')
    if not ops.mmcv_cuda_available():
        with pytest.raises(RuntimeError, match="impl='cuda' needs CUDA"):
            msda(*inputs, impl='cuda')


def test_auto_on_cpu_uses_our_kernel() -> None:
    value, shapes, starts, locations, weights = make_inputs(*CASES['one_level_one_point'])
    value.requires_grad_()
    assert (
        type(msda(value, shapes, starts, locations, weights).grad_fn).__name__
        == 'MSDeformAttnCPUFunctionBackward'
    )
    assert (
        type(msda(value, shapes, starts, locations, weights, impl='pytorch').grad_fn).__name__
        != 'MSDeformAttnCPUFunctionBackward'
    )


def test_auto_selection_for_cuda_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the selection logic; a fake tensor stands for a CUDA one on GPU-less machines."""
    fake_cuda = types.SimpleNamespace(is_cuda=True, device=torch.device('cuda', 0))
    monkeypatch.setattr(ms_deform_attn, 'mmcv_cuda_available', lambda: True)
    assert ms_deform_attn._select_impl(fake_cuda, 'auto') == 'cuda'
    assert ms_deform_attn._select_impl(fake_cuda, 'pytorch') == 'pytorch'
    with pytest.raises(RuntimeError, match="impl='cpu' needs CPU"):
        ms_deform_attn._select_impl(fake_cuda, 'cpu')
    monkeypatch.setattr(ms_deform_attn, 'mmcv_cuda_available', lambda: False)
    with pytest.warns(RuntimeWarning):
        ms_deform_attn._warn_cuda_fallback.cache_clear()
        assert ms_deform_attn._select_impl(fake_cuda, 'auto') == 'pytorch'


def test_cuda_tensors_without_mmcv_cuda_ops_warn_once_naming_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The silent fallback to the slow grid_sample path on a GPU is said out loud, once."""
    import warnings

    fake_cuda = types.SimpleNamespace(is_cuda=True, device=torch.device('cuda', 0))
    monkeypatch.setattr(ms_deform_attn, 'mmcv_cuda_available', lambda: False)
    monkeypatch.setattr(
        ms_deform_attn, 'mmcv_cuda_problem', lambda: 'mmcv 2.1.0 was compiled without CUDA'
    )
    ms_deform_attn._warn_cuda_fallback.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for _ in range(3):
            assert ms_deform_attn._select_impl(fake_cuda, 'auto') == 'pytorch'
    (warning,) = caught
    message = str(warning.message)
    assert issubclass(warning.category, RuntimeWarning)
    assert '(mmcv 2.1.0 was compiled without CUDA)' in message
    assert 'grid_sample reference, many times slower' in message
    assert 'MMCV_WITH_OPS=1' in message and 'tools/misc/check_install.py' in message
    ms_deform_attn._warn_cuda_fallback.cache_clear()


@pytest.mark.parametrize(
    'gpu,compiled,expected',
    [
        (False, '12.1', 'torch sees no CUDA GPU'),
        (True, 'not available', 'was compiled without CUDA'),
        (True, ImportError('libcudart.so.12: cannot open shared object file'), 'does not load'),
        (True, '12.1', None),
    ],
    ids=['no-gpu', 'cpu-build', 'broken-ops', 'usable'],
)
def test_mmcv_cuda_problem_says_why(monkeypatch, gpu, compiled, expected) -> None:
    from mmcv.ops import info

    def compiling_cuda_version():
        if isinstance(compiled, Exception):
            raise compiled
        return compiled

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: gpu)
    monkeypatch.setattr(info, 'get_compiling_cuda_version', compiling_cuda_version)
    for cached in (ms_deform_attn.mmcv_cuda_problem, ms_deform_attn.mmcv_cuda_available):
        cached.cache_clear()
    try:
        problem = ms_deform_attn.mmcv_cuda_problem()
        assert (problem is None) if expected is None else (expected in problem), problem
        assert ms_deform_attn.mmcv_cuda_available() is (expected is None)
    finally:
        monkeypatch.undo()
        for cached in (ms_deform_attn.mmcv_cuda_problem, ms_deform_attn.mmcv_cuda_available):
            cached.cache_clear()


def test_cuda_path_calls_mmcv_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 'cuda' branch hands mmcv's Function the tensors and an im2col_step dividing bs."""
    import mmcv.ops.multi_scale_deform_attn as mmcv_msda

    calls = []

    class FakeFunction:
        @staticmethod
        def apply(value, shapes, starts, locations, weights, im2col_step):
            calls.append(im2col_step)
            return multi_scale_deformable_attn_pytorch(value, shapes, locations, weights)

    monkeypatch.setattr(mmcv_msda, 'MultiScaleDeformableAttnFunction', FakeFunction)
    value, shapes, starts, locations, weights = make_inputs(6, 3, 2, 4, [(3, 3)], 1)
    output = ms_deform_attn._run('cuda', value, shapes, starts, locations, weights, 4)
    assert calls == [3]  # 6 is not a multiple of 4: mmcv would assert
    torch.testing.assert_close(output, msda(value, shapes, starts, locations, weights))


def test_failed_build_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch.utils.cpp_extension

    # a machine without the library built (an existing one is imported without compiling)
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))

    def no_compiler(*args, **kwargs):
        raise RuntimeError('no C++ compiler found')

    monkeypatch.setattr(cpu_kernel, '_extension', None)
    monkeypatch.setattr(cpu_kernel, '_build_error', None)
    monkeypatch.setattr(torch.utils.cpp_extension, 'load', no_compiler)
    value, shapes, starts, locations, weights = make_inputs(*CASES['three_levels'])
    with pytest.warns(RuntimeWarning, match=r'no C\+\+ compiler found'):
        first = msda(value, shapes, starts, locations, weights, impl='cpu')
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter('error')
        second = msda(value, shapes, starts, locations, weights)
    want = multi_scale_deformable_attn_pytorch(value, shapes, locations, weights)
    torch.testing.assert_close(first, want)
    torch.testing.assert_close(second, want)
    assert isinstance(cpu_kernel.cpu_extension_error(), RuntimeError)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('case', list(CASES))
def test_cuda_parity_with_reference(case: str) -> None:
    if not ops.mmcv_cuda_available():
        pytest.skip('mmcv was built without CUDA ops')
    value, shapes, starts, locations, weights = (t.cuda() for t in make_inputs(*CASES[case]))
    want = forward_and_grads(our_fn(shapes, starts, 'pytorch'), value, locations, weights)
    got = forward_and_grads(our_fn(shapes, starts, 'auto'), value, locations, weights)
    for got_t, want_t in zip(got, want):
        torch.testing.assert_close(got_t, want_t, rtol=1e-8, atol=1e-8)


def test_tracing_uses_the_reference_path() -> None:
    """Traced graphs (and ONNX export) must not contain our Python autograd Function."""
    value, shapes, starts, locations, weights = make_inputs(*CASES['one_level_one_point'])
    traced = torch.jit.trace(
        lambda v, loc, w: msda(v, shapes, starts, loc, w),
        (value, locations, weights),
        check_trace=False,
    )
    assert 'grid_sampler' in str(traced.graph)
    assert 'MSDeformAttnCPUFunction' not in str(traced.graph)
    torch.testing.assert_close(
        traced(value, locations, weights), msda(value, shapes, starts, locations, weights)
    )


@pytest.mark.parametrize('impl', CPU_IMPLS)
@pytest.mark.parametrize(
    'starts', [[0, 20, 39], [0, 24, 38], [1, 25, 40]], ids=['in_bounds', 'off_by_one', 'shifted']
)
def test_level_start_index_disagreeing_with_shapes_is_refused(impl: str, starts: list) -> None:
    """Levels (6, 4), (3, 5), (2, 2) start at 0, 24, 39. A wrong index must be refused by every
    path, also the grid_sample one that does not read it and an in-bounds one that the kernel
    would otherwise read silently."""
    value, shapes, _, locations, weights = make_inputs(*CASES['three_levels'])
    with pytest.raises(
        ValueError,
        match=r'level_start_index \[.*\] disagrees with '
        r'spatial_shapes.*\[0, 24, 39\]',
    ):
        msda(value, shapes, torch.tensor(starts), locations, weights, impl=impl)


@pytest.mark.parametrize(
    'starts,match', [([0, 20, 39], 'disagrees'), ([0, 24, 42], 'does not fit')]
)
def test_kernel_itself_refuses_bad_level_start_index(starts: list, match: str) -> None:
    """The C++ kernel checks on its own (callers of MSDeformAttnCPUFunction skip the wrapper)."""
    value, shapes, _, locations, weights = make_inputs(*CASES['three_levels'])
    with pytest.raises(RuntimeError, match=match):
        cpu_kernel.MSDeformAttnCPUFunction.apply(
            value, shapes, torch.tensor(starts), locations, weights
        )


def test_float_level_start_index_is_refused() -> None:
    value, shapes, starts, locations, weights = make_inputs(*CASES['three_levels'])
    with pytest.raises(ValueError, match='level_start_index must be an integer'):
        msda(value, shapes, starts.double(), locations, weights)


# Non-finite inputs: both paths follow grid_sample (zero padding times the weight):
# a NaN/inf location makes its (query, head) output NaN, and so does a NaN/inf weight, inside the
# map (arithmetic) or outside it (0 * weight). One point of (b=0, q=1, m=0, l=1, k=0) is corrupted;
# `inside`/`outside` first moves it to the map's centre / past its right edge.
NAN, INF = float('nan'), float('inf')
NON_FINITE_CASES = {
    'nan_x': ('inside', 'location', 0, NAN),
    'nan_y': ('inside', 'location', 1, NAN),
    'nan_xy': ('inside', 'location', slice(None), NAN),
    'inf_x': ('inside', 'location', 0, INF),
    'minus_inf_y': ('outside', 'location', 1, -INF),
    'nan_weight_inside': ('inside', 'weight', None, NAN),
    'nan_weight_outside': ('outside', 'weight', None, NAN),
    'inf_weight_inside': ('inside', 'weight', None, INF),
    'inf_weight_outside': ('outside', 'weight', None, INF),
}


def assert_same_non_finite(got: Tensor, want: Tensor, name: str) -> None:
    """Same elements non-finite (NaN and inf count alike: adding four corners of +-inf can give
    either), the finite ones equal to float64 precision."""
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite), name
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize('case', list(NON_FINITE_CASES))
def test_non_finite_inputs_agree_with_the_reference(case: str) -> None:
    where, tensor, coordinate, bad = NON_FINITE_CASES[case]
    value, shapes, starts, locations, weights = make_inputs(*CASES['three_levels'])
    point = (0, 1, 0, 1, 0)
    locations[point] = torch.tensor([0.5, 0.5] if where == 'inside' else [1.7, 0.5])
    if tensor == 'location':
        locations[point + (coordinate,)] = bad
    else:
        weights[point] = bad
    want = forward_and_grads(our_fn(shapes, starts, 'pytorch'), value, locations, weights)
    got = forward_and_grads(our_fn(shapes, starts, 'cpu'), value, locations, weights)
    assert not torch.isfinite(want[0][0, 1, :32]).any()  # the head's row is NaN ...
    assert torch.isfinite(want[0][0, 1, 32:]).all() and torch.isfinite(want[0][1]).all()  # only
    for name, got_t, want_t in zip(
        ['output', 'grad_value', 'grad_locations', 'grad_weights'], got, want
    ):
        assert_same_non_finite(got_t, want_t, name)


def test_pip_ninja_is_put_on_path_when_none_is_found(tmp_path, monkeypatch):
    # `.venv/bin/python ...` runs without the venv's bin folder on PATH, where pip's ninja lives.
    import shutil

    from mmdet_deformdetr.ops import cpu_kernel

    monkeypatch.setenv('PATH', str(tmp_path))
    assert shutil.which('ninja') is None
    cpu_kernel._ensure_ninja_on_path()
    assert shutil.which('ninja') is not None
