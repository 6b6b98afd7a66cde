"""Mixed precision on the CPU: bfloat16 autocast, selected by ``tools/train.py --amp`` on CPU.

Why: mmengine's ``AmpOptimWrapper`` raises unless CUDA (or NPU/MLU/MUSA) is available. On the CPU,
``torch.autocast('cpu')`` supports bfloat16, which has float32's exponent range: gradients do not
underflow, so no ``GradScaler`` (loss scaling) is needed, and this wrapper is a plain
``OptimWrapper`` whose forward context enters autocast. Parameters, gradients and the optimizer
state stay float32; autocast only runs eligible ops (linear, conv, matmul) in bfloat16. Our
multi-scale deformable attention op computes in float32 under autocast (see
``mmdet_deformdetr/ops/ms_deform_attn.py``).
"""
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper


class CPUAutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose ``optim_context`` runs the forward under CPU bfloat16 autocast.

    Accepts the same arguments as ``OptimWrapper`` (``optimizer``, ``accumulative_counts``,
    ``clip_grad``). Gradient accumulation (``no_sync``) comes from ``OptimWrapper.optim_context``.
    """

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
                f'picks it when CUDA is available).')
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
