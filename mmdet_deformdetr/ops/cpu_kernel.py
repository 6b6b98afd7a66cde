"""Our C++ CPU kernel: JIT build on first use and its autograd wrapper.

The extension is compiled once per machine and kernel version by ``torch.utils.cpp_extension.load``
into torch's extension cache (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``):

- the name carries a hash of the sources, the compiler flags and the torch / Python versions (the
  library's ABI), so an edited kernel, a different CPU or another torch never picks up a stale
  library, and nothing else: two checkouts (or a checkout and an installed copy), each with its own
  virtual environment, share one build;
- a library already built under that name is imported directly, not through
  ``torch.utils.cpp_extension.load``: torch writes the build's include paths (those of the torch
  installation, i.e. of the virtual environment) into its ninja file and recompiles when they
  change, so every fresh clone with its own ``.venv`` would silently rebuild the kernel in its first
  training iterations, and two environments would rebuild each other's library in turn;
- the sources are staged into the build directory first, because torch's cached build records the
  paths it compiled and rebuilds when they change: compiled from each checkout's own path, two
  checkouts would rebuild each other's library every time they alternate;
- torch guards the build directory with a file lock, so two processes that start at once build it
  once and both load it;
- the first build takes a while (``docs/installation.md``), so it is logged before it starts and
  when it ends.
"""

import hashlib
import importlib.util
import os
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

_CSRC = Path(__file__).resolve().parent / 'csrc'
_SOURCE = _CSRC / 'ms_deform_attn_cpu.cpp'

_lock = threading.Lock()
_extension: Optional[ModuleType] = None
_build_error: Optional[BaseException] = None


def _compiler_flags() -> List[str]:
    # -fopenmp makes at::parallel_for multi-threaded (it is inline, OpenMP based); the library then
    # links libgomp.so.1, which resolves to the copy torch already loaded, so one thread pool and
    # torch.set_num_threads() applies. Vector ISA flags only when this CPU has them: the D loop is
    # the hot one and AVX2/FMA roughly doubles its width over the SSE2 baseline.
    flags = ['-O3', '-fopenmp']
    if torch.backends.cpu.get_cpu_capability() in ('AVX2', 'AVX512'):
        flags += ['-mavx2', '-mfma']
    return flags


def _source_files() -> List[Path]:
    return sorted(_CSRC.glob('*.[ch]*'))


def _extension_name(flags: List[str]) -> str:
    # torch rebuilds when a listed source changes, but not when an included header does: hash both
    # (contents and names, never the folder they are in).
    digest = hashlib.sha1(' '.join(flags).encode())
    # the ABI the library is built against: it is imported by name in any environment (see above)
    digest.update(f'torch {torch.__version__} python {sys.version_info[:2]}'.encode())
    for path in _source_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return f'mmdet_deformdetr_msda_cpu_{digest.hexdigest()[:10]}'


def _build_directory(name: str) -> Path:
    root = os.environ.get('TORCH_EXTENSIONS_DIR')
    if root is None:
        from torch.utils.cpp_extension import get_default_build_root

        root = get_default_build_root()
    return Path(root) / name


def _stage_sources(build_directory: Path) -> Path:
    """Copy the sources into ``build_directory/src`` (atomically per file, so concurrent
    processes never see half a file) and return the staged main source."""
    staged = build_directory / 'src'
    staged.mkdir(parents=True, exist_ok=True)
    for path in _source_files():
        target = staged / path.name
        if not target.is_file() or target.read_bytes() != path.read_bytes():
            partial = staged / f'.{path.name}.{os.getpid()}.tmp'
            shutil.copyfile(path, partial)
            os.replace(partial, target)
    return staged / _SOURCE.name


def _log(message: str) -> None:
    from mmengine.logging import print_log

    print_log(f'mmdet_deformdetr: {message}', logger='current')


def _ensure_ninja_on_path() -> None:
    """torch's JIT build runs ``ninja`` from PATH. The pip package ``ninja`` (one of our
    dependencies) lives in the environment's bin folder, which is not on PATH when a user runs
    ``.venv/bin/python`` directly; add that folder only when no ninja is found."""
    if shutil.which('ninja') is not None:
        return
    try:
        import ninja
    except ImportError:
        return  # the build then fails with torch's own "Ninja is required" message
    os.environ['PATH'] = ninja.BIN_DIR + os.pathsep + os.environ.get('PATH', '')


def load_cpu_extension() -> Optional[ModuleType]:
    """Build (first call only) and return the C++ extension, or None if it cannot be built.

    A failed build is reported once with a warning naming the error, then remembered, so callers
    fall back to the reference path without trying to compile again on every call.
    """
    global _extension, _build_error
    if _extension is not None or _build_error is not None:
        return _extension
    with _lock:
        if _extension is None and _build_error is None:
            try:
                from torch.utils.cpp_extension import load

                flags = _compiler_flags()
                name = _extension_name(flags)
                build_directory = _build_directory(name)
                _extension = _import_built(name, build_directory)
                if _extension is not None:
                    return _extension
                _log(
                    f'compiling the C++ CPU kernel of multi-scale deformable attention (once per '
                    f'machine, kernel version and torch version, about a minute on 2 cores; or '
                    f'waiting for another process that is compiling it) into {build_directory}'
                )
                start = time.perf_counter()
                source = _stage_sources(build_directory)
                _ensure_ninja_on_path()
                _extension = load(
                    name=name,
                    sources=[str(source)],
                    extra_cflags=flags,
                    extra_ldflags=['-fopenmp'],
                    build_directory=str(build_directory),
                    verbose=False,
                )
                _log(f'C++ CPU kernel ready ({time.perf_counter() - start:.0f} s)')
            except Exception as error:  # noqa: BLE001 - any build failure means "fall back"
                _build_error = error
                warnings.warn(
                    'mmdet_deformdetr: could not build the C++ multi-scale deformable attention '
                    f'kernel ({type(error).__name__}: {error}); using the slower grid_sample '
                    'reference instead.',
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _extension


def _import_built(name: str, build_directory: Path) -> Optional[ModuleType]:
    """The library built earlier under ``name``, imported as it is; None when there is none, a
    build holds the directory's lock (torch's ``load`` then waits for it), or it does not import
    (then removed, and built again by ``load``)."""
    library = build_directory / f'{name}.so'
    if not library.is_file() or (build_directory / 'lock').exists():
        return None
    try:
        spec = importlib.util.spec_from_file_location(name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as error:
        # e.g. cut off by a killed build: removed, so that torch's ninja build (which only
        # compares file times) builds it again instead of loading the same file
        _log(f'the built C++ CPU kernel {library} does not import ({error}); building it again')
        library.unlink(missing_ok=True)
        return None
    return module


def cpu_extension_error() -> Optional[BaseException]:
    """The exception of a failed build, or None (not tried yet, or built fine)."""
    return _build_error


class MSDeformAttnCPUFunction(torch.autograd.Function):
    """Autograd wrapper of the C++ kernel; all inputs on CPU, float32 or float64, one dtype."""

    @staticmethod
    def forward(
        ctx,
        value: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        sampling_locations: Tensor,
        attention_weights: Tensor,
    ) -> Tensor:
        """Shapes as :func:`mmdet_deformdetr.ops.multi_scale_deformable_attn`.

        Returns:
            ``(bs, num_queries, M * D)``.
        """
        extension = load_cpu_extension()
        if extension is None:
            raise RuntimeError(f'the C++ CPU kernel is not available: {_build_error}')
        ctx.save_for_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
        return extension.forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )

    @staticmethod
    @once_differentiable
    def backward(
        ctx, grad_output: Tensor
    ) -> Tuple[Optional[Tensor], None, None, Optional[Tensor], Optional[Tensor]]:
        """``grad_output (bs, nq, M * D)`` -> grads of value, locations and attention weights."""
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
            ctx.saved_tensors
        )
        # One pass computes all three: the two small ones come almost free with grad_value.
        grad_value, grad_locations, grad_weights = load_cpu_extension().backward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            grad_output,
        )
        needs = ctx.needs_input_grad
        return (
            grad_value if needs[0] else None,
            None,
            None,
            grad_locations if needs[3] else None,
            grad_weights if needs[4] else None,
        )


def _require_extension() -> ModuleType:
    extension = load_cpu_extension()
    if extension is None:
        raise RuntimeError(f'the C++ CPU kernel is not available: {_build_error}')
    return extension


# The same kernel as a torch.library operator, for graphs that torch.compile and torch.export
# capture: dynamo cannot trace into an autograd.Function calling a pybind11 module without a graph
# break, while a custom op with a fake kernel (output shape from input shapes) and a registered
# autograd formula is one node of the graph. Eager calls keep MSDeformAttnCPUFunction, whose
# ``PythonOp`` node the FLOP counter of torch.jit traces recognises (analysis/flops.py).
@torch.library.custom_op(
    'mmdet_deformdetr::ms_deform_attn_cpu', mutates_args=(), device_types='cpu'
)
def ms_deform_attn_cpu_op(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Shapes as :func:`mmdet_deformdetr.ops.multi_scale_deformable_attn`; returns
    ``(bs, num_queries, M * D)``. All on the CPU, float32 or float64, one dtype."""
    return _require_extension().forward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


@ms_deform_attn_cpu_op.register_fake
def _ms_deform_attn_cpu_fake(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    batch_size, num_queries, num_heads = sampling_locations.shape[:3]
    return value.new_empty((batch_size, num_queries, num_heads * value.shape[3]))


@torch.library.custom_op(
    'mmdet_deformdetr::ms_deform_attn_cpu_backward', mutates_args=(), device_types='cpu'
)
def ms_deform_attn_cpu_backward_op(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    grad_output: Tensor,
) -> Tuple[Tensor, Tensor, Tensor]:
    """``grad_output (bs, nq, M * D)`` -> grads of value, sampling locations, attention weights."""
    grad_value, grad_locations, grad_weights = _require_extension().backward(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        grad_output.contiguous(),
    )
    return grad_value, grad_locations, grad_weights


@ms_deform_attn_cpu_backward_op.register_fake
def _ms_deform_attn_cpu_backward_fake(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    grad_output: Tensor,
) -> Tuple[Tensor, Tensor, Tensor]:
    return (
        torch.empty_like(value),
        torch.empty_like(sampling_locations),
        torch.empty_like(attention_weights),
    )


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_output: Tensor) -> tuple:
    grad_value, grad_locations, grad_weights = ms_deform_attn_cpu_backward_op(
        *ctx.saved_tensors, grad_output
    )
    return grad_value, None, None, grad_locations, grad_weights


ms_deform_attn_cpu_op.register_autograd(_backward, setup_context=_setup_context)
