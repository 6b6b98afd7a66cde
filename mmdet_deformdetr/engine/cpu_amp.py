"""Mixed precision on the CPU: bfloat16 autocast, selected by ``tools/train.py --amp`` on CPU.

Why: mmengine's ``AmpOptimWrapper`` raises unless CUDA (or NPU/MLU/MUSA) is available. On the CPU,
``torch.autocast('cpu')`` supports bfloat16, which has float32's exponent range: gradients do not
underflow, so no ``GradScaler`` (loss scaling) is needed, and this wrapper is a plain
``OptimWrapper`` whose forward context enters autocast. Parameters, gradients and the optimizer
state stay float32; autocast only runs eligible ops (linear, conv, matmul) in bfloat16. Our
multi-scale deformable attention op computes in float32 under autocast (see
``mmdet_deformdetr/ops/ms_deform_attn.py``).

bf16 is fast only on CPUs with bfloat16 arithmetic: x86 with AVX512-BF16 or AMX-BF16, Arm with the
BF16 extension. Elsewhere (e.g. AVX2-only x86) it is emulated and training is many times slower
than float32 (``docs/performance.md``). So the wrapper logs a WARNING when it is built where bf16
is not native, decided from ``/proc/cpuinfo``'s flags and the instruction sets torch actually
uses (``cpu_bf16_support``).

Decision: ``--amp`` still selects bf16 there (a loud warning, not a silent switch to float32):
``--amp`` must mean the same numerics on every machine, so that a run resumed or repeated
elsewhere gives comparable results, and a user who wants bf16 (memory) keeps it. The warning
names the faster path (train without ``--amp``); ``tools/analysis_tools/benchmark_cpu_amp.py``
measures the ratio on the machine at hand.
"""

import logging
import os
from contextlib import contextmanager
from typing import Iterator, Mapping, Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper

#: /proc/cpuinfo flags of native bfloat16 arithmetic: x86 ('flags') and Arm ('Features')
NATIVE_BF16_FLAGS = {'avx512_bf16', 'amx_bf16', 'bf16'}
#: torch CPU capabilities of x86 builds whose kernels have no bfloat16 instructions
X86_CAPABILITIES_WITHOUT_BF16 = {'DEFAULT', 'NO AVX', 'AVX', 'AVX2'}
#: words of the oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) that still include bfloat16 instructions
ONEDNN_ISAS_WITH_BF16 = ('BF16', 'AMX', 'FP16', 'AVX10', 'ALL', 'DEFAULT')


def cpu_bf16_support(
    cpuinfo: Optional[str] = None,
    capability: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Tuple[Optional[bool], str]:
    """Whether bfloat16 runs on native instructions here, and the evidence in words.

    Native means: the CPU has them (``/proc/cpuinfo``: x86 ``avx512_bf16`` / ``amx_bf16``, Arm
    ``bf16``) and torch uses them: on x86 its kernels are dispatched above AVX2
    (``torch.backends.cpu.get_cpu_capability()``; ``ATEN_CPU_CAPABILITY=avx2`` lowers it) and
    oneDNN (matmul, convolution) is not limited below BF16 by ``ONEDNN_MAX_CPU_ISA``: limited to
    AVX2, an AMX CPU emulates bfloat16 as slowly as an AVX2-only one.

    Args:
        cpuinfo, capability, environ: ``/proc/cpuinfo``'s text, torch's CPU capability and the
            environment; read from the running machine when None (parameters for tests).

    Returns:
        ``(True | False | None, evidence)``; None when the CPU flags cannot be read (no
        ``/proc/cpuinfo``, e.g. macOS): then nothing is claimed.
    """
    capability = capability or torch.backends.cpu.get_cpu_capability()
    environ = os.environ if environ is None else environ
    if cpuinfo is None:
        try:
            with open('/proc/cpuinfo') as file:
                cpuinfo = file.read()
        except OSError:
            return None, f'no /proc/cpuinfo; torch CPU capability {capability}'
    flags, x86 = set(), False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(':')
        if key.strip() in ('flags', 'Features'):
            flags.update(value.split())
            x86 = x86 or key.strip() == 'flags'
    if not flags:
        return None, f'no CPU flags in /proc/cpuinfo; torch CPU capability {capability}'
    native = sorted(flags & NATIVE_BF16_FLAGS)
    if not native:
        return False, (
            f'/proc/cpuinfo lists none of {", ".join(sorted(NATIVE_BF16_FLAGS))}; '
            f'torch CPU capability {capability}'
        )
    evidence = f'/proc/cpuinfo lists {", ".join(native)}; torch CPU capability {capability}'
    onednn = environ.get('ONEDNN_MAX_CPU_ISA') or environ.get('DNNL_MAX_CPU_ISA')
    if x86 and capability.upper() in X86_CAPABILITIES_WITHOUT_BF16:
        return False, f'{evidence}, which has no bfloat16 kernels'
    if x86 and onednn and not any(word in onednn.upper() for word in ONEDNN_ISAS_WITH_BF16):
        return False, f'{evidence}; oneDNN limited to {onednn} (ONEDNN_MAX_CPU_ISA)'
    return True, evidence


class CPUAutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose ``optim_context`` runs the forward under CPU bfloat16 autocast.

    Accepts the same arguments as ``OptimWrapper`` (``optimizer``, ``accumulative_counts``,
    ``clip_grad``). Gradient accumulation (``no_sync``) comes from ``OptimWrapper.optim_context``.
    Logs a WARNING when built on a CPU without native bfloat16 (see the module docstring).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        native, evidence = cpu_bf16_support()
        if native is False:
            print_log(
                f'--amp / CPUAutocastOptimWrapper: bf16 autocast will be much SLOWER than '
                f'float32 on this CPU, which has no native bfloat16 arithmetic ({evidence}): '
                f'~13x per iteration measured for the demo model on an AVX2 CPU. Train without '
                f'--amp (float32) unless you need bf16; tools/analysis_tools/benchmark_cpu_amp.py '
                f'measures the ratio here.',
                logger='current',
                level=logging.WARNING,
            )

    @contextmanager
    def optim_context(self, model: torch.nn.Module) -> Iterator[None]:
        """Forward context: ``OptimWrapper``'s (gradient accumulation) + bf16 CPU autocast.

        Raises:
            ValueError: if the model's parameters are on a GPU, where this context would silently
                leave every op in float32; use mmengine's ``AmpOptimWrapper`` there.
        """
        devices = {param.device.type for param in model.parameters()}
        if devices - {'cpu'}:
            raise ValueError(
                f'CPUAutocastOptimWrapper autocasts CPU ops only, but the model has parameters on '
                f'{sorted(devices)}; use AmpOptimWrapper for GPU training (tools/train.py --amp '
                f'picks it when CUDA is available).'
            )
        with super().optim_context(model), torch.autocast('cpu', dtype=torch.bfloat16):
            yield


def select_amp_optim_wrapper(cfg: Config, cuda_available: Optional[bool] = None) -> str:
    """``--amp``: mmengine's ``AmpOptimWrapper`` (fp16, dynamic loss scale) with CUDA, as mmdet's
    ``tools/train.py``; ``CPUAutocastOptimWrapper`` (bf16, no loss scale) without.

    Returns:
        the optim wrapper type written to ``cfg.optim_wrapper.type``.
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if cuda_available:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    else:
        cfg.optim_wrapper.type = 'CPUAutocastOptimWrapper'
        cfg.optim_wrapper.pop('loss_scale', None)
    return cfg.optim_wrapper.type
