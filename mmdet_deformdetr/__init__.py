"""mmdet-deformdetr: Deformable DETR as an MMDetection 3.x plugin.

Importing this package registers every module of ours in mmdet's registries. Registration happens
here and nowhere else. Besides ``__version__`` it exposes where the shipped configs are
(``configs_root()``, ``find_config(name)``; ``shipped_configs.py``), in a checkout and in an
installed wheel alike.
"""

from mmdet.registry import DATASETS, HOOKS, MODELS
from mmengine.registry import (
    LOG_PROCESSORS,
    MODEL_WRAPPERS,
    OPTIM_WRAPPER_CONSTRUCTORS,
    OPTIM_WRAPPERS,
)
from mmengine.runner import CheckpointLoader

from .checkpoint import (
    SCHEME,
    install_safe_globals,
    load_from_deformdetr_uri,
    load_from_local_safely,
)
from .datasets import CheckedCocoDataset, CheckNumClassesHook
from .engine import (
    AtomicCheckpointHook,
    CPUAutocastOptimWrapper,
    CPUDistributedDataParallel,
    GroupedOptimWrapperConstructor,
    HostMemoryHook,
    PreemptionHook,
    StopOnNonFiniteHook,
    ValRoundLogProcessor,
)
from .models.detector import DeformDETR
from .models.head import DeformDETRHead
from .models.layers import MSDeformAttn
from .models.necks import BiFPNNeck
from .models.transformer import DeformableDetrTransformer
from .shipped_configs import configs_root, find_config
from .version import __version__

__all__ = ['__version__', 'configs_root', 'find_config']

MODELS.register_module(module=BiFPNNeck)
MODELS.register_module(module=MSDeformAttn)
MODELS.register_module(module=DeformableDetrTransformer)
MODELS.register_module(module=DeformDETRHead)
MODELS.register_module(module=DeformDETR)

# Checkpoints: torch >= 2.6 loads with weights_only=True, which refuses mmengine's
# own training checkpoints and the official ones; allow-list exactly the inert types they need
# (mmdet_deformdetr/checkpoint/safe_load.py explains why this is the narrowest fix).
install_safe_globals()
CheckpointLoader.register_scheme(prefixes=SCHEME, loader=load_from_deformdetr_uri)
# Every plain path (load_from, resume, tools/test.py CKPT, load_checkpoint) through our safe
# loader: mmengine's `''` loader calls torch.load without weights_only, so
# TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 re-opens full unpickling there, and its refusals advise
# disabling the protection. force=True is mmengine's documented way to replace a scheme's loader
# (CheckpointLoader.register_scheme); it touches only the `''` scheme, not mmengine's other
# schemes nor any registry of modules. Narrower seams do not exist: a Runner subclass misses
# load_checkpoint / DetInferencer, patching torch.load is process-wide, and shadowing `''` with
# regex prefixes relies on the undocumented order of the scheme table.
# Tested in tests/checkpoint/test_ckpt_load_paths.py.
CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safely, force=True)

# Engine fixes for CPU runs (mmdet_deformdetr/engine/ documents each): a DDP wrapper that
# accepts mmengine's device_ids for CPU modules, and bf16 autocast for --amp without CUDA.
MODEL_WRAPPERS.register_module(module=CPUDistributedDataParallel)
OPTIM_WRAPPERS.register_module(module=CPUAutocastOptimWrapper)
# One param group per distinct setting instead of per parameter (engine/grouped_optim.py).
OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=GroupedOptimWrapperConstructor)
# Iteration-based runs: the validation round in the json log, as mmdet's analyze_logs.py groups
# lines by epoch (engine/log_processor.py).
LOG_PROCESSORS.register_module(module=ValRoundLogProcessor)

# Bad data (mmdet_deformdetr/datasets/ documents each case): mmdet's CocoDataset with
# checks that name the file and the fix, and a start-of-run check of num_classes against the data.
DATASETS.register_module(module=CheckedCocoDataset)
HOOKS.register_module(module=CheckNumClassesHook)

# Fault tolerance of long runs (mmdet_deformdetr/engine/ documents each): checkpoints that a kill
# mid-save cannot cost, a stop at the first non-finite loss / gradient norm / weight, and a
# checkpoint then exit 75 on a scheduler's signal. The configs select them as
# default_hooks.checkpoint, default_hooks.check_finite and default_hooks.preemption.
HOOKS.register_module(module=AtomicCheckpointHook)
HOOKS.register_module(module=StopOnNonFiniteHook)
HOOKS.register_module(module=PreemptionHook)

# Host memory of long runs (engine/host_memory.py): RSS / PSS of the training process and its
# dataloader workers, for soak tests (tools/analysis_tools/soak_memory.py) and custom_hooks.
HOOKS.register_module(module=HostMemoryHook)
