"""The demo's training precision: bf16 autocast where the CPU computes bfloat16 natively, else
float32, with the reason logged.

Why: on a CPU with AMX-BF16 / AVX512-BF16 a demo iteration under bf16 autocast takes little more
than half of float32's time, with the same mAP at equal iterations; without them bf16 is emulated
and many times slower (``docs/performance.md``, ``tools/analysis_tools/benchmark_cpu_amp.py``).
``--precision fp32 | bf16`` overrides the choice.
"""

from __future__ import annotations

from typing import Optional, Tuple

from mmengine.config import Config

CHOICES = ('auto', 'fp32', 'bf16')


def choose_precision(
    cfg: Config, choice: str, native: Optional[Tuple[Optional[bool], str]] = None
) -> Tuple[str, str]:
    """Set ``cfg.optim_wrapper`` for the chosen precision.

    Args:
        cfg: the demo config (its ``optim_wrapper.type`` is rewritten for bf16).
        choice: ``'auto'`` (bf16 where native), ``'fp32'`` or ``'bf16'``.
        native: ``cpu_bf16_support()``'s answer (read from this machine when None).

    Returns:
        ``('bf16' | 'fp32', reason)``, the reason a line for the log.
    """
    if choice not in CHOICES:
        raise ValueError(f'precision must be one of {CHOICES}, got {choice!r}')
    if choice == 'auto':
        if native is None:
            from mmdet_deformdetr.engine import cpu_bf16_support

            native = cpu_bf16_support()
        supported, evidence = native
        if supported:
            choice = 'bf16'
            reason = (
                f'bf16 autocast: this CPU computes bfloat16 natively ({evidence}), about half '
                "of float32's iteration time (--precision fp32 to train in float32)"
            )
        else:
            choice = 'fp32'
            reason = (
                f'float32: no native bfloat16 here ({evidence}), where bf16 autocast is many '
                'times slower'
            )
    else:
        reason = f'{choice}: --precision {choice}'
    if choice == 'bf16':
        cfg.optim_wrapper.type = 'CPUAutocastOptimWrapper'
    elif cfg.optim_wrapper.get('type') == 'CPUAutocastOptimWrapper':
        cfg.optim_wrapper.type = 'OptimWrapper'
    return choice, reason
