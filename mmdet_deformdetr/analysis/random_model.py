"""A model with random weights for benchmarks and comparisons that need no checkpoint."""

import logging

import torch
from mmdet.registry import MODELS
from mmengine.config import ConfigDict

from ..console.quiet import mmengine_logger_at


def build_random_model(model_cfg: ConfigDict, seed: int) -> torch.nn.Module:
    """``model_cfg`` built and initialised with ``seed``, every weight outside the backbone moved
    off its initialisation (zero attention logits and box deltas would hide differences), in
    eval mode. The backbone's ImageNet ``init_cfg`` is dropped (no download)."""
    model_cfg = model_cfg.copy()
    model_cfg.backbone = dict(model_cfg.backbone, init_cfg=None)
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    with mmengine_logger_at(logging.WARNING):  # not mmengine's per-parameter init report
        model.init_weights()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith('backbone.'):
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()
