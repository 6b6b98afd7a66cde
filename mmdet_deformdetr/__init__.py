"""mmdet-deformdetr: Deformable DETR as an MMDetection 3.x plugin.

Importing this package registers every module of ours in mmdet's registries. Registration happens
here and nowhere else.
"""
from mmdet.registry import HOOKS, MODELS
from mmengine.registry import MODEL_WRAPPERS, OPTIM_WRAPPERS
from mmengine.runner import CheckpointLoader

from .checkpoint import SCHEME, install_safe_globals, load_from_deformdetr_uri
from .engine import (
                     AtomicCheckpointHook,
                     CPUAutocastOptimWrapper,
                     CPUDistributedDataParallel,
                     StopOnNonFiniteHook,
)
from .models.detector import DeformDETR
from .models.head import DeformDETRHead
from .models.layers import MSDeformAttn
from .models.necks import BiFPNNeck
from .models.transformer import DeformableDetrTransformer
from .version import __version__

__all__ = ['__version__']

MODELS.register_module(module=BiFPNNeck)
MODELS.register_module(module=MSDeformAttn)
MODELS.register_module(module=DeformableDetrTransformer)
MODELS.register_module(module=DeformDETRHead)
MODELS.register_module(module=DeformDETR)

# Checkpoints (issue #5): torch >= 2.6 loads with weights_only=True, which refuses mmengine's own
# training checkpoints and the official ones; allow-list exactly the inert types they need
# (mmdet_deformdetr/checkpoint/safe_load.py explains why this is the narrowest fix).
install_safe_globals()
CheckpointLoader.register_scheme(prefixes=SCHEME, loader=load_from_deformdetr_uri)

# Engine fixes for CPU runs (issue #6; mmdet_deformdetr/engine/ documents each): a DDP wrapper that
# accepts mmengine's device_ids for CPU modules, and bf16 autocast for --amp without CUDA.
MODEL_WRAPPERS.register_module(module=CPUDistributedDataParallel)
OPTIM_WRAPPERS.register_module(module=CPUAutocastOptimWrapper)

# Fault tolerance of long runs (mmdet_deformdetr/engine/ documents each): checkpoints that a kill
# mid-save cannot cost, and a stop at the first non-finite loss / gradient norm / weight. The
# configs select them as default_hooks.checkpoint and default_hooks.check_finite.
HOOKS.register_module(module=AtomicCheckpointHook)
HOOKS.register_module(module=StopOnNonFiniteHook)
