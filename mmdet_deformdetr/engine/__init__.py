"""Narrow fixes around mmengine, each documented in its module.

- ``CPUDistributedDataParallel``: DDP wrapper accepting mmengine's ``device_ids`` for CPU modules.
- ``CPUAutocastOptimWrapper``: ``--amp`` on the CPU (bfloat16 autocast, no loss scaling).
- ``configure_cpu_distributed``: what the tools apply for CPU multi-process runs (gloo, the wrapper,
  process-group initialisation without ``torch.cuda.set_device``).

Registration of the two classes happens in ``mmdet_deformdetr/__init__.py``.
"""
from .cpu_amp import CPUAutocastOptimWrapper, select_amp_optim_wrapper
from .cpu_ddp import CPUDistributedDataParallel
from .cpu_dist import configure_cpu_distributed
from .tool_config import load_tool_config

__all__ = ['CPUAutocastOptimWrapper', 'CPUDistributedDataParallel', 'configure_cpu_distributed',
           'load_tool_config', 'select_amp_optim_wrapper']
