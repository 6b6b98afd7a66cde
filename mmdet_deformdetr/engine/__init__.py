"""Training-engine pieces around mmengine, each documented in its module.

- ``AtomicCheckpointHook``: checkpoints written to a temporary file and renamed into place,
  ``last_checkpoint`` after them, old ones deleted last: a kill mid-save loses nothing.
- ``PreemptionHook``: on SIGTERM / SIGUSR1 / SIGINT, finish the iteration, save its checkpoint
  once all ranks agree, exit with ``PREEMPTED_EXIT_CODE`` (75); ``TrainingPreempted``.
- ``WorkDirLock``: one training run per work dir (stale locks of dead runs taken over).
- ``CheckpointWriteError``: a checkpoint that cannot be written (full disk, unwritable folder),
  with the bytes needed and free (``disk_space.py``; exit status ``CHECKPOINT_WRITE_EXIT_CODE``).
- ``StopOnNonFiniteHook``: stops at the first NaN / Inf loss term, gradient norm or weight, before
  any checkpoint of it is written.
- ``CPUDistributedDataParallel``: DDP wrapper accepting mmengine's ``device_ids`` for CPU modules.
- ``CPUAutocastOptimWrapper``: ``--amp`` on the CPU (bfloat16 autocast, no loss scaling).
- ``GroupedOptimWrapperConstructor``: mmengine's constructor with parameters of equal settings in
  one param group (one per parameter made the optimizer step a fixed cost that small models feel).
- ``ValRoundLogProcessor``: mmengine's log processor whose json log of an iteration-based run
  carries the validation round as ``epoch``, so that mmdet's ``analyze_logs.py`` plots one mAP
  point per evaluation.
- ``HostMemoryHook``: RSS / PSS of the training process and its dataloader workers every N
  iterations (log lines and a CSV; ``tools/analysis_tools/soak_memory.py``).
- ``configure_cpu_distributed``: what the tools apply for CPU multi-process runs (gloo, the wrapper,
  process-group initialisation without ``torch.cuda.set_device``).

Registration of the classes happens in ``mmdet_deformdetr/__init__.py``; the command-line helpers
of ``tools/train.py`` / ``tools/test.py`` live with the tools (``tools/tool_common.py``).
"""

from .atomic_checkpoint import AtomicCheckpointHook
from .cpu_amp import CPUAutocastOptimWrapper, cpu_bf16_support, select_amp_optim_wrapper
from .cpu_ddp import CPUDistributedDataParallel
from .cpu_dist import configure_cpu_distributed
from .disk_space import CHECKPOINT_WRITE_EXIT_CODE, CheckpointWriteError
from .finite_check import NonFiniteTrainingError, StopOnNonFiniteHook
from .grouped_optim import GroupedOptimWrapperConstructor, merge_param_groups
from .host_memory import HostMemoryHook
from .log_processor import ValRoundLogProcessor
from .preemption import PREEMPTED_EXIT_CODE, PreemptionHook, TrainingPreempted
from .work_dir_lock import WorkDirLock, WorkDirLockedError, process_rank

__all__ = [
    'CHECKPOINT_WRITE_EXIT_CODE',
    'PREEMPTED_EXIT_CODE',
    'AtomicCheckpointHook',
    'CheckpointWriteError',
    'CPUAutocastOptimWrapper',
    'CPUDistributedDataParallel',
    'GroupedOptimWrapperConstructor',
    'HostMemoryHook',
    'NonFiniteTrainingError',
    'PreemptionHook',
    'StopOnNonFiniteHook',
    'TrainingPreempted',
    'ValRoundLogProcessor',
    'WorkDirLock',
    'WorkDirLockedError',
    'configure_cpu_distributed',
    'merge_param_groups',
    'cpu_bf16_support',
    'select_amp_optim_wrapper',
    'process_rank',
]
