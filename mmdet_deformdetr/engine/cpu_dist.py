"""What ``tools/train.py`` / ``tools/test.py`` change in a config for CPU-only runs.

Multi-process CPU runs (``tools/dist_train.sh`` on a machine without CUDA) hit three GPU
assumptions in mmdet / mmengine, each fixed here as narrowly as possible:

1. mmdet's ``default_runtime.py`` sets ``env_cfg.dist_cfg.backend='nccl'``; NCCL needs GPUs, so the
   backend becomes ``gloo``.
2. mmengine's ``init_dist`` calls ``torch.cuda.set_device(local_rank)`` before
   ``init_process_group``, which raises on a CPU-only build of torch (and on a machine without a
   GPU). We initialise the process group ourselves from the ``torchrun`` environment (``env://``);
   ``Runner.setup_env`` then sees an initialised group and skips ``init_dist``.
3. ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]``, which torch's DDP refuses for CPU
   modules: ``cfg.model_wrapper_cfg`` selects ``CPUDistributedDataParallel`` (see ``cpu_ddp.py``)
   with mmengine's own defaults (``broadcast_buffers=False``, ``find_unused_parameters`` from the
   config).

Nothing happens when CUDA is available or the launcher is ``none``.

Faults: when a rank dies, torchrun stops the others and exits non-zero
(tests/tools/test_dist_faults.py). A rank that hangs instead (or a
peer on another machine that vanishes) leaves the others blocked in a gloo collective until
``env_cfg.dist_cfg.timeout`` (seconds, mmengine's convention): written into the config as 1800
(torch's gloo default) when unset, so that the dumped config shows it and
``--cfg-options env_cfg.dist_cfg.timeout=S`` lowers it. Keep it above the longest phase one rank
spends alone (a checkpoint save, the COCO evaluation on rank 0).

Exit: the group initialised here is destroyed by an ``atexit`` handler. A process that ends with a
gloo group still alive can abort in interpreter finalisation ("terminate called without an active
exception", exit -6, measured in 10 of 50 two-rank runs of a few collectives; pytorch issue 190489):
gloo's worker threads still hold work objects then. Neither mmengine's Runner nor mmdet's tools
destroy the group.
"""

import atexit
import datetime
import os
from typing import Optional

import torch
import torch.distributed as torch_dist
from mmengine.config import Config

#: seconds a gloo collective waits for a missing peer (torch's default for gloo, made explicit)
DEFAULT_GLOO_TIMEOUT_S = 1800


def configure_cpu_distributed(cfg: Config, cuda_available: Optional[bool] = None) -> bool:
    """Adapt ``cfg`` (launcher already set) for a CPU multi-process run and join the group.

    Args:
        cfg: the full config; ``cfg.launcher`` is ``'none'``, ``'pytorch'``, ``'slurm'`` or
            ``'mpi'``. Modified in place: ``env_cfg.dist_cfg.backend`` (and ``timeout`` when
            unset) and ``model_wrapper_cfg``.
        cuda_available: defaults to ``torch.cuda.is_available()``; a parameter for tests.

    Returns:
        True when the config was adapted (CPU and a launcher), False when nothing was needed.

    Raises:
        ValueError: for ``slurm`` / ``mpi`` launchers without CUDA (only the ``pytorch``
            launcher, i.e. ``torchrun`` / ``tools/dist_train.sh``, is supported on the CPU), or
            for a ``model_wrapper_cfg`` of another type (it would fail in torch's DDP).
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    launcher = cfg.get('launcher', 'none')
    if cuda_available or launcher == 'none':
        return False
    if launcher != 'pytorch':
        raise ValueError(
            f'CPU multi-process runs support --launcher pytorch (tools/dist_train.sh, '
            f"tools/dist_test.sh), not '{launcher}': mmengine's {launcher} initialisation "
            f'selects a CUDA device, and no CUDA device is available.'
        )

    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    dist_cfg['backend'] = 'gloo'
    if dist_cfg.get('timeout') is None:
        dist_cfg['timeout'] = DEFAULT_GLOO_TIMEOUT_S

    wrapper_cfg = cfg.get('model_wrapper_cfg') or {}
    wrapper_type = wrapper_cfg.get('type', 'CPUDistributedDataParallel')
    if wrapper_type not in ('CPUDistributedDataParallel', 'MMDistributedDataParallel'):
        raise ValueError(
            f"model_wrapper_cfg.type='{wrapper_type}' is not supported on the CPU; leave it unset "
            f'(CPUDistributedDataParallel is used).'
        )
    cfg.model_wrapper_cfg = dict(
        dict(
            broadcast_buffers=False, find_unused_parameters=cfg.get('find_unused_parameters', False)
        ),
        **{key: value for key, value in wrapper_cfg.items() if key != 'type'},
        type='CPUDistributedDataParallel',
    )

    _init_process_group(dist_cfg)
    return True


def _init_process_group(dist_cfg: dict) -> None:
    """``init_process_group`` from torchrun's RANK / WORLD_SIZE / MASTER_* variables (env://)."""
    if torch_dist.is_initialized():
        return
    missing = [
        name
        for name in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
        if name not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f'--launcher pytorch needs the variables torchrun sets ({", ".join(missing)} '
            f'missing); start the run with tools/dist_train.sh or python -m torch.distributed.run.'
        )
    kwargs = {key: value for key, value in dist_cfg.items() if key != 'backend'}
    if kwargs.get('timeout') is not None:
        # mmengine's convention: seconds in the config, a timedelta for torch
        kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
    torch_dist.init_process_group(backend=dist_cfg['backend'], **kwargs)
    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    """Destroy the default group if still alive (runs at exit, before interpreter finalisation)."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
