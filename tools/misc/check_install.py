"""Check an installation of mmdet-deformdetr: versions, the attention implementation each device
will use and why, and the attention op's parity on every device.

    python tools/misc/check_install.py [--device cpu cuda:0 ...]

Prints the versions (python, torch and its CUDA, the GPUs, mmcv and whether its ops are built with
CUDA, mmengine, mmdet, ours, the deployment runtimes when installed), which implementation of
multi-scale deformable attention each device runs and why, and then checks the op:

- CPU: our C++ kernel (built here if needed, about a minute the first time) against the
  ``grid_sample`` reference in float64, forward and backward;
- each GPU: mmcv's CUDA op against our CPU kernel in float64 as the truth, in float32 and under
  fp16 / bf16 autocast, forward and backward (tolerances in ``TOLERANCES``).

Exit status 0 when every check passes, 1 otherwise; the last line is a one-line summary.
"""

import argparse
import contextlib
import dataclasses
import functools
import importlib
import importlib.metadata
import platform
import sys
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

# max |actual - expected| / max |expected| allowed, by the dtype the op's inputs arrive in.
# float64 (CPU kernel vs grid_sample): two float64 evaluations of the same sums in another order
# agree to ~1e-15; 1e-10 leaves room for that and nothing more.
# float32 (mmcv CUDA vs float64 truth): each output sums L*K*4 bilinear terms, and the backward
# accumulates with atomicAdd in any order; float32's eps is 1.2e-7, so accumulation error stays
# below ~1e-5, while a wrong kernel (another level, a kernel of another GPU architecture) is off by
# O(1). fp16 / bf16 autocast: the value and the result are rounded to the low precision (unit
# roundoff 2^-11 and 2^-8); twice that.
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 2.0**-10,
    torch.bfloat16: 2.0**-7,
}
# (bs, num_queries, heads M, channels per head D, [(H, W) per level], points K): three levels of
# non-square maps, locations partly outside the maps
PARITY_CASE = (2, 9, 2, 8, [(6, 9), (3, 5), (2, 2)], 3)
FIX_MMCV_CUDA = (
    'install an mmcv built with its ops for this torch and CUDA (MMCV_WITH_OPS=1, nvcc on PATH; '
    'docs/installation.md)'
)

AttentionOp = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _import(module: str) -> Tuple[Optional[object], str]:
    """(module, its version) or (None, why it does not import)."""
    try:
        imported = importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - a broken install is what this tool reports
        return None, f'does not import ({type(error).__name__}: {error})'
    return imported, str(getattr(imported, '__version__', '?'))


def mmcv_ops_status() -> Tuple[bool, str]:
    """(mmcv's compiled ops load, what they were built with)."""
    try:
        from mmcv.ops.info import get_compiler_version, get_compiling_cuda_version

        cuda = get_compiling_cuda_version()
        compiler = get_compiler_version()
    except Exception as error:  # noqa: BLE001
        return False, f'do not load ({type(error).__name__}: {error})'
    built_with = 'CPU only' if cuda in ('', 'not available') else f'CUDA {cuda}'
    return True, f'built ({built_with}, {compiler})'


def version_rows() -> List[Tuple[str, str]]:
    """(name, version and build facts) of everything the attention and the tools depend on."""
    rows = [('python', platform.python_version())]
    torch_build = f'CUDA {torch.version.cuda}' if torch.version.cuda else 'CPU-only build'
    rows.append(
        ('torch', f'{torch.__version__} ({torch_build}, {torch.get_num_threads()} threads)')
    )
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            name = torch.cuda.get_device_name(index)
            rows.append((f'cuda:{index}', f'{name} (sm_{major}{minor})'))
    else:
        rows.append(('GPU', 'none that torch sees'))
    for module in ('mmcv', 'mmengine', 'mmdet', 'mmdet_deformdetr'):
        rows.append((module, _import(module)[1]))
        if module == 'mmcv':
            rows.append(('mmcv ops', mmcv_ops_status()[1]))
    for distribution in ('onnx', 'onnxruntime', 'onnxscript', 'openvino'):
        version = _version(distribution)
        if version is not None:
            rows.append((distribution, version))
    return rows


def package_check() -> Check:
    """The package imports and finds its shipped configs."""
    try:
        import mmdet_deformdetr

        return Check('configs', True, f'shipped configs in {mmdet_deformdetr.configs_root()}')
    except Exception as error:  # noqa: BLE001 - reported; the checks that need it are skipped
        return Check('mmdet_deformdetr', False, f'{type(error).__name__}: {error}')


def implementation_checks(devices: Sequence[str]) -> List[Check]:
    """Which implementation each device runs (``impl='auto'``) and why; a check fails when the
    device is left with the slow reference."""
    from mmdet_deformdetr.ops import cpu_kernel, mmcv_cuda_problem

    checks = []
    for device in devices:
        if device == 'cpu':
            print('  (building our C++ CPU kernel if needed: about a minute the first time)')
            if cpu_kernel.load_cpu_extension() is not None:
                checks.append(Check('cpu', True, "'cpu': our C++ kernel (ops/csrc, OpenMP)"))
            else:
                error = cpu_kernel.cpu_extension_error()
                checks.append(
                    Check(
                        'cpu',
                        False,
                        "'pytorch' (grid_sample, slow): our C++ kernel did not build "
                        f'({type(error).__name__}: {error}); a C++ compiler (g++) and ninja '
                        'are needed',
                    )
                )
            continue
        problem = mmcv_cuda_problem()
        if problem is None:
            checks.append(
                Check(device, True, f"'cuda': mmcv's CUDA op (mmcv ops {mmcv_ops_status()[1]})")
            )
        else:
            checks.append(
                Check(
                    device,
                    False,
                    f"'pytorch' (grid_sample, many times slower): {problem}. Fix: {FIX_MMCV_CUDA}",
                )
            )
    return checks


def parity_inputs(device: str) -> List[Tensor]:
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights (float64)
    and a gradient for the output, on ``device``."""
    bs, num_queries, num_heads, head_dims, shapes, num_points = PARITY_CASE
    generator = torch.Generator().manual_seed(0)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    levels = len(shapes)

    def uniform(*size: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        sample = torch.rand(*size, generator=generator, dtype=torch.float64)
        return low + (high - low) * sample

    value = uniform(bs, int(sizes.sum()), num_heads, head_dims, low=-1.0)
    locations = uniform(bs, num_queries, num_heads, levels, num_points, 2, low=-0.2, high=1.2)
    weights = uniform(bs, num_queries, num_heads, levels, num_points).softmax(-1)
    grad_output = uniform(bs, num_queries, num_heads * head_dims, low=-1.0)
    tensors = [value, spatial_shapes, level_start_index, locations, weights, grad_output]
    return [tensor.to(device) for tensor in tensors]


def forward_backward(
    op: AttentionOp, inputs: Sequence[Tensor], value_dtype: torch.dtype, autocast: bool
) -> Dict[str, Tensor]:
    """The op's output and the gradients of value, locations and weights, with ``value`` in
    ``value_dtype`` (as the value projection yields it under autocast) and the locations and
    weights in at least float32 (as ``MSDeformAttn`` makes them)."""
    value, spatial_shapes, level_start_index, locations, weights, grad_output = inputs
    precise = torch.promote_types(value_dtype, torch.float32)
    # fresh leaves (copies), so that no two calls share a tensor and its accumulated .grad
    leaves = [
        value.to(value_dtype, copy=True).requires_grad_(),
        locations.to(precise, copy=True).requires_grad_(),
        weights.to(precise, copy=True).requires_grad_(),
    ]
    context = (
        torch.autocast(value.device.type, dtype=value_dtype)
        if autocast
        else contextlib.nullcontext()
    )
    with context:
        output = op(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
    output.backward(grad_output.to(output.dtype))
    names = ('value', 'sampling_locations', 'attention_weights')
    result = {'output': output.detach()}
    result.update({f'grad {name}': leaf.grad for name, leaf in zip(names, leaves)})
    return result


def _compare(
    label: str, actual: Dict[str, Tensor], expected: Dict[str, Tensor], tolerance: float
) -> List[Check]:
    checks = []
    for key, want in expected.items():
        got = actual[key].detach().to('cpu', torch.float64)
        want = want.detach().to('cpu', torch.float64)
        scale = want.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
        error = float(((got - want).abs().max() / scale).nan_to_num(nan=float('inf')))
        part = 'forward' if key == 'output' else f'backward ({key})'
        checks.append(
            Check(
                f'{label}, {part}',
                error <= tolerance,
                f'max relative error {error:.1e} (tolerance {tolerance:.0e})',
            )
        )
    return checks


def _op(impl: str) -> AttentionOp:
    from mmdet_deformdetr.ops import multi_scale_deformable_attn

    return functools.partial(multi_scale_deformable_attn, impl=impl)


def cpu_parity() -> List[Check]:
    """Our CPU kernel against the grid_sample reference, float64, forward and backward."""
    inputs = parity_inputs('cpu')
    expected = forward_backward(_op('pytorch'), inputs, torch.float64, autocast=False)
    actual = forward_backward(_op('cpu'), inputs, torch.float64, autocast=False)
    return _compare(
        'cpu kernel vs grid_sample, float64', actual, expected, TOLERANCES[torch.float64]
    )


def cuda_parity(device: str, cuda_op: Optional[AttentionOp] = None) -> List[Check]:
    """``cuda_op`` (mmcv's CUDA op through our dispatch by default) on ``device`` against our CPU
    kernel in float64 on the same (rounded) inputs: float32, fp16 and bf16 autocast."""
    cuda_op = cuda_op or _op('cuda')
    inputs = parity_inputs(device)
    checks = []
    for dtype, autocast in ((torch.float32, False), (torch.float16, True), (torch.bfloat16, True)):
        label = f'{device} CUDA op vs cpu kernel, {"autocast " if autocast else ""}{dtype}'
        try:
            actual = forward_backward(cuda_op, inputs, dtype, autocast)
        except Exception as error:  # noqa: BLE001 - e.g. "no kernel image is available"
            hint = ''
            if 'no kernel image' in str(error):
                major, minor = torch.cuda.get_device_capability(device)
                hint = (
                    f"; mmcv's ops were built for another GPU architecture: rebuild mmcv with "
                    f'TORCH_CUDA_ARCH_LIST={major}.{minor}'
                )
            checks.append(Check(label, False, f'{type(error).__name__}: {error}{hint}'))
            continue
        # the truth: float64 on the CPU, from the inputs exactly as the op received them
        cpu_inputs = [tensor.to('cpu') for tensor in inputs]
        cpu_inputs[0] = cpu_inputs[0].to(dtype).double()
        precise = torch.promote_types(dtype, torch.float32)
        cpu_inputs[3] = cpu_inputs[3].to(precise).double()
        cpu_inputs[4] = cpu_inputs[4].to(precise).double()
        cpu_inputs[5] = cpu_inputs[5].to(actual['output'].dtype).double()
        expected = forward_backward(_op('cpu'), cpu_inputs, torch.float64, autocast=False)
        checks += _compare(label, actual, expected, TOLERANCES[dtype])
    return checks


def _available_devices() -> List[str]:
    devices = ['cpu']
    if torch.cuda.is_available():
        devices += [f'cuda:{index}' for index in range(torch.cuda.device_count())]
    return devices


def _print_checks(checks: Sequence[Check]) -> None:
    width = max(len(check.name) for check in checks)
    for check in checks:
        print(f'  {"PASS" if check.ok else "FAIL"}  {check.name:<{width}}  {check.detail}')


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--device', nargs='+', help='devices to check (default: cpu and every CUDA device)'
    )
    args = parser.parse_args(argv)
    devices = args.device or _available_devices()

    print('versions')
    rows = version_rows()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f'  {name:<{width}}  {value}')
    print('package')
    checks = [package_check()]
    _print_checks(checks)
    if not checks[0].ok:
        return _summarise(checks, [])

    print('attention implementation per device (impl="auto")')
    implementations = implementation_checks(devices)
    _print_checks(implementations)
    print('op parity')
    for check in implementations:
        try:
            if check.name == 'cpu' and check.ok:
                found = cpu_parity()
            elif check.name.startswith('cuda') and check.ok:
                found = cuda_parity(check.name)
            else:
                continue
        except Exception:  # noqa: BLE001 - an unexpected failure is a failed check, shown whole
            found = [Check(f'{check.name} parity', False, traceback.format_exc(limit=3))]
        _print_checks(found)
        checks += found
    return _summarise(checks, implementations)


def _summarise(checks: List[Check], implementations: List[Check]) -> int:
    everything = implementations + checks
    failed = [check.name for check in everything if not check.ok]
    used = '; '.join(f'{check.name} runs {check.detail.split(":")[0]}' for check in implementations)
    if failed:
        print(f'PROBLEM: {len(failed)} of {len(everything)} checks failed: {", ".join(failed)}')
        return 1
    print(f'OK: {len(everything)} checks passed ({used})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
