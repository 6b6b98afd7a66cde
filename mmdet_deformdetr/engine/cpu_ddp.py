"""Distributed data parallel for CPU-only runs (gloo).

Why: when ``cfg.model_wrapper_cfg`` is unset, mmengine's ``Runner.wrap_model`` builds
``MMDistributedDataParallel(device_ids=[int(os.environ['LOCAL_RANK'])])``, and when it is set to a
``DistributedDataParallel`` subclass it passes the same ``device_ids`` as a default argument.
``torch.nn.parallel.DistributedDataParallel`` refuses ``device_ids`` for a module whose parameters
live on the CPU ("device_ids ... only work with single-device/multiple-device GPU modules"). This
subclass drops ``device_ids`` / ``output_device`` when the module is on the CPU and changes nothing
else, so the Runner, its loops and ``train_step`` / ``val_step`` / ``test_step`` stay mmengine's.

``tools/train.py`` and ``tools/test.py`` select it (through ``configure_cpu_distributed``) only
when CUDA is unavailable and a launcher other than ``none`` is used.
"""

from typing import Any

import torch
from mmengine.model import MMDistributedDataParallel


def _module_on_cpu(module: torch.nn.Module) -> bool:
    """True when every parameter and buffer is on the CPU (a module without any counts as CPU)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return all(tensor.device.type == 'cpu' for tensor in tensors)


class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that accepts mmengine's ``device_ids`` default for CPU modules.

    Args:
        module (nn.Module): the model; on the CPU, ``device_ids`` and ``output_device`` are
            dropped (torch requires ``None`` for CPU modules); on a GPU they are kept, so the
            wrapper behaves exactly as ``MMDistributedDataParallel``.
        **kwargs: passed to ``MMDistributedDataParallel`` (``broadcast_buffers``,
            ``find_unused_parameters``, ``detect_anomalous_params``, ...).
    """

    def __init__(self, module: torch.nn.Module, **kwargs: Any) -> None:
        if _module_on_cpu(module):
            kwargs.pop('device_ids', None)
            kwargs.pop('output_device', None)
        super().__init__(module=module, **kwargs)
