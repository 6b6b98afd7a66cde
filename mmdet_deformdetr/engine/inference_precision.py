"""Inference precision: ``--precision fp32|bf16|auto`` of ``tools/test.py``, ``tools/infer.py`` and
``tools/analysis_tools/benchmark_fps.py``, decided in one place.

* ``fp32``: float32 everywhere.
* ``bf16``: ``torch.autocast('cpu', torch.bfloat16)`` around the model's forward: convolutions,
  linear layers and matrix products run in bfloat16; the weights stay float32. The deformable
  attention op computes in float32 inside (``ops/ms_deform_attn.py``), and the decoder's
  ``nn.MultiheadAttention`` runs in float32 under CPU autocast, as in training (``cpu_amp.py``).
  ``tools/test.py`` sets mmengine's own switch for this, ``test_cfg.fp16=True``: mmengine's
  ``TestLoop`` enters ``mmengine.runner.amp.autocast``, which on the CPU is bfloat16 autocast
  (it disables any autocast around the loop otherwise, so an outer context would not work).
* ``auto``: ``bf16`` only where both hold:

  1. the CPU computes bfloat16 natively (AVX512-BF16 / AMX-BF16 / Arm BF16, and torch and oneDNN
     use them; ``cpu_amp.cpu_bf16_support``, the one owner of that decision): elsewhere bf16 is
     emulated and many times slower than float32;
  2. bf16 keeps the accuracy: COCO bbox mAP of a trained model within ``BF16_MAP_TOLERANCE``
     (0.005) of float32. ``BF16_ACCURACY_VERIFIED`` records that this was measured (the demo model
     on its val split, ``docs/performance.md#accuracy-of-every-inference-path``); check your own
     model with ``tools/deployment/verify_deploy.py --pytorch-bf16``.

On a GPU, ``bf16`` is refused (use mmengine's CUDA autocast, ``test_cfg.fp16``), and ``auto`` is
``fp32``.
"""

import argparse
import logging
from contextlib import nullcontext
from typing import ContextManager, Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from .cpu_amp import cpu_bf16_support

PRECISIONS = ('fp32', 'bf16', 'auto')
#: largest loss of COCO bbox mAP against float32 at which ``auto`` may choose bf16
BF16_MAP_TOLERANCE = 0.005
#: whether the mAP comparison of float32 and bf16 on a trained model is in docs/performance.md
#: and within BF16_MAP_TOLERANCE (the condition 2 of ``auto``)
BF16_ACCURACY_VERIFIED = True


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision fp32|bf16|auto`` (default ``fp32``)."""
    parser.add_argument(
        '--precision',
        choices=PRECISIONS,
        default='fp32',
        help='inference precision: fp32; bf16 (CPU autocast, the attention op stays float32); '
        'auto = bf16 only on CPUs with native bfloat16 once its mAP is verified '
        '(docs/performance.md), else fp32',
    )


def resolve_precision(
    precision: str,
    device_type: str = 'cpu',
    native_bf16: Optional[bool] = None,
    accuracy_verified: Optional[bool] = None,
) -> Tuple[str, str]:
    """``'fp32'`` or ``'bf16'`` for a requested precision, and why, in words.

    Args:
        precision: one of :data:`PRECISIONS`.
        device_type: where the model runs (``'cpu'``, ``'cuda'``).
        native_bf16, accuracy_verified: the two conditions of ``auto``; read from
            :func:`cpu_bf16_support` and :data:`BF16_ACCURACY_VERIFIED` when None.

    Raises:
        ValueError: an unknown precision, or ``bf16`` on a device other than the CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    if precision == 'fp32':
        return 'fp32', 'requested'
    if device_type != 'cpu':
        if precision == 'bf16':
            raise ValueError(
                f"--precision bf16 is CPU autocast; on {device_type} use mmengine's autocast "
                '(--cfg-options test_cfg.fp16=True with tools/test.py)'
            )
        return 'fp32', f'auto: bf16 is chosen on the CPU only, the model runs on {device_type}'
    evidence = ''
    if native_bf16 is None:
        native_bf16, evidence = cpu_bf16_support()
    if precision == 'bf16':
        if native_bf16 is False:
            print_log(
                f'--precision bf16 on a CPU without native bfloat16 ({evidence}): bf16 is '
                'emulated there and much slower than float32',
                logger='current',
                level=logging.WARNING,
            )
        return 'bf16', 'requested'
    if accuracy_verified is None:
        accuracy_verified = BF16_ACCURACY_VERIFIED
    if not native_bf16:
        return 'fp32', f'auto: no native bfloat16 on this CPU ({evidence or "not detected"})'
    if not accuracy_verified:
        return 'fp32', (
            f'auto: the CPU has native bfloat16, but bf16 mAP within {BF16_MAP_TOLERANCE} of '
            'float32 is not verified yet (docs/performance.md)'
        )
    return 'bf16', f'auto: native bfloat16 ({evidence}) and mAP verified'


def inference_autocast(precision: str, device_type: str = 'cpu') -> ContextManager:
    """The context to run a forward in: bf16 CPU autocast for ``'bf16'``, nothing for
    ``'fp32'`` (a resolved precision, see :func:`resolve_precision`)."""
    if precision == 'bf16':
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    if precision == 'fp32':
        return nullcontext()
    raise ValueError(f"a resolved precision is 'fp32' or 'bf16', got {precision!r}")


def apply_precision_to_config(cfg: Config, precision: str) -> None:
    """For runner-based tools: bf16 through mmengine's ``TestLoop(fp16=True)`` (bfloat16
    autocast on the CPU); fp32 sets it False."""
    if precision not in ('fp32', 'bf16'):
        raise ValueError(f"a resolved precision is 'fp32' or 'bf16', got {precision!r}")
    cfg.test_cfg = dict(cfg.get('test_cfg') or dict(type='TestLoop'))
    cfg.test_cfg['fp16'] = precision == 'bf16'


def log_precision(precision: str, reason: str) -> None:
    print_log(f'inference precision: {precision} ({reason})', logger='current')
