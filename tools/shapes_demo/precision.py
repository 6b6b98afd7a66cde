"""The demo's training precision: bf16 autocast where the CPU computes bfloat16 natively, else
float32, with the reason logged.

Why: on a CPU with AMX-BF16 / AVX512-BF16 a demo iteration under bf16 autocast took 0.54x
float32's time on a 2-core AMX Xeon (316 vs 588 ms, alternated in one process) and 0.55-0.64x on
a 2-core AMD EPYC with AVX512-BF16 and no AMX (``tools/analysis_tools/benchmark_cpu_amp.py``,
two runs), with the same mAP on the val split at equal iterations (0.251 vs 0.259 at 640);
without them bf16 is emulated and ~13x slower. ``--precision fp32 | bf16`` overrides the choice.
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
                f'bf16 autocast: this CPU computes bfloat16 natively ({evidence}); measured '
                "0.54-0.64x float32's iteration time on 2-core AMX and AVX512-BF16 CPUs "
                '(--precision fp32 to train in float32)'
            )
        else:
            choice = 'fp32'
            reason = (
                f'float32: no native bfloat16 here ({evidence}), where bf16 autocast was ~13x '
                'slower'
            )
    else:
        reason = f'{choice}: --precision {choice}'
    if choice == 'bf16':
        cfg.optim_wrapper.type = 'CPUAutocastOptimWrapper'
    elif cfg.optim_wrapper.get('type') == 'CPUAutocastOptimWrapper':
        cfg.optim_wrapper.type = 'OptimWrapper'
    return choice, reason
