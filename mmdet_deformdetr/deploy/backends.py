"""Runtimes for an exported ONNX file: onnxruntime and OpenVINO on the CPU, TensorRT on a GPU.

Each backend is a session over one file with the same call: ``run(feeds) -> outputs`` in the
graph's output order (``boxes``, ``scores``, ``labels``), numpy in and out. The packages are
optional (``pip install -e '.[deploy]'`` brings onnxruntime and OpenVINO) and imported only
by the backend that needs them.

* ``onnxruntime``: CPU execution provider, all graph optimisations, ``num_threads`` intra-op
  threads and one inter-op thread (the graph is a chain: parallel branches gain nothing).
* ``openvino``: the ONNX file read by OpenVINO's frontend and compiled for its CPU plugin with
  the latency hint, ``num_threads`` inference threads and an explicit inference precision:
  ``f32`` by default, because OpenVINO otherwise picks bf16 by itself on CPUs that compute it
  natively (AMX, AVX512-BF16), which moves scores; ``ov_precision='bf16'`` asks for it.
  ``cache_dir`` keeps compiled blobs, so a second session on the same file compiles faster.
* ``tensorrt``: onnxruntime's TensorRT execution provider (onnxruntime-gpu built with it, a GPU);
  untested by this project's tests, which run on CPUs.
"""

from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

BACKENDS = ('onnxruntime', 'openvino', 'tensorrt')
OV_PRECISIONS = ('f32', 'bf16')
_PACKAGES = {'onnxruntime': 'onnxruntime', 'openvino': 'openvino', 'tensorrt': 'onnxruntime'}


def require_backend(backend: str) -> None:
    """Fail with the install command when ``backend`` is unknown or its package is missing."""
    if backend not in BACKENDS:
        raise ValueError(f'unknown backend {backend!r}; choose one of {", ".join(BACKENDS)}')
    try:
        __import__(_PACKAGES[backend])
    except ImportError as error:
        raise ImportError(
            f'the {backend} backend needs the {_PACKAGES[backend]} package: install the '
            "deploy extra, pip install -e '.[deploy]'"
        ) from error


class OnnxRuntimeSession:
    """An onnxruntime session (CPU, or TensorRT then CUDA with ``tensorrt=True``)."""

    def __init__(self, path: Path, num_threads: Optional[int], tensorrt: bool = False) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        providers = ['CPUExecutionProvider']
        if tensorrt:
            wanted = ['TensorrtExecutionProvider', 'CUDAExecutionProvider']
            missing = set(wanted) - set(onnxruntime.get_available_providers())
            if missing:
                raise RuntimeError(
                    f'the tensorrt backend needs onnxruntime-gpu with {", ".join(sorted(missing))}'
                    ' (and a GPU); this onnxruntime has '
                    f'{", ".join(onnxruntime.get_available_providers())}'
                )
            providers = wanted + providers
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        self.input_names = tuple(item.name for item in self.session.get_inputs())

    def run(self, feeds: Dict[str, np.ndarray]) -> Tuple[np.ndarray, ...]:
        return tuple(self.session.run(None, feeds))


class OpenVinoSession:
    """The file compiled by OpenVINO for its CPU plugin (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        num_threads: Optional[int],
        precision: str = 'f32',
        cache_dir: Optional[Union[str, Path]] = None,
    ) -> None:
        import openvino

        if precision not in OV_PRECISIONS:
            raise ValueError(
                f'unknown OpenVINO precision {precision!r}; choose one of {OV_PRECISIONS}'
            )
        core = openvino.Core()
        config = {'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_PRECISION_HINT': precision}
        if num_threads is not None:
            config['INFERENCE_NUM_THREADS'] = num_threads
        if cache_dir is not None:
            core.set_property({'CACHE_DIR': str(cache_dir)})
            # from a path, so that the cache can skip reading the model at all
            self.compiled = core.compile_model(str(path), 'CPU', config)
        else:
            self.compiled = core.compile_model(core.read_model(str(path)), 'CPU', config)
        self.request = self.compiled.create_infer_request()
        self.input_names = tuple(port.get_any_name() for port in self.compiled.inputs)
        self.precision = precision

    def run(self, feeds: Dict[str, np.ndarray]) -> Tuple[np.ndarray, ...]:
        results = self.request.infer(feeds)
        # copies: the request reuses its output buffers on the next call
        return tuple(np.array(results[port]) for port in self.compiled.outputs)


def create_session(
    path: Union[str, Path],
    backend: str = 'onnxruntime',
    num_threads: Optional[int] = None,
    ov_precision: str = 'f32',
    cache_dir: Optional[Union[str, Path]] = None,
) -> Union[OnnxRuntimeSession, OpenVinoSession]:
    """A session of ``backend`` over the ONNX file ``path``.

    Args:
        path: an ``.onnx`` file.
        backend: one of :data:`BACKENDS`.
        num_threads: intra-op (onnxruntime) / inference (OpenVINO) threads; None: the
            runtime's default (one per core).
        ov_precision: OpenVINO's inference precision hint, ``'f32'`` or ``'bf16'``.
        cache_dir: OpenVINO's compiled-model cache (None: no cache).
    """
    require_backend(backend)
    if backend == 'openvino':
        return OpenVinoSession(Path(path), num_threads, ov_precision, cache_dir)
    return OnnxRuntimeSession(Path(path), num_threads, tensorrt=backend == 'tensorrt')


def describe(backend: str, ov_precision: str = 'f32') -> str:
    """A row label: the backend, its package version, and OpenVINO's precision."""
    require_backend(backend)
    module = __import__(_PACKAGES[backend])
    version = getattr(module, '__version__', None) or getattr(module, 'get_version', str)()
    version = version.split('-')[0]  # OpenVINO's build suffix: 2026.4.1-22982-<hash>-releases/...
    label = f'{backend} {version}'.strip()
    return f'{label} {ov_precision}' if backend == 'openvino' else label
