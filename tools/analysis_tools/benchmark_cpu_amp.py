"""Time a training iteration of the demo model in float32 and under ``--amp`` on the CPU (bf16
autocast, ``CPUAutocastOptimWrapper``), and print the ratio with what decides the warning.

The model is ``configs/demo/deformable-detr-refine-twostage_r18_shapes.py`` (ResNet-18 at half
width, 128-d, 3 + 3 layers, 100 queries, two-stage + refine); the batch is its own: 8 images of
256 x 256 with 1-5 random boxes each (``mmdet.testing.demo_mm_inputs``, seeded). Each mode runs
``--warmup`` iterations, then ``--repeat`` timed ones (``model.train_step``: forward, backward,
clip, AdamW step); the median is reported.

    python tools/analysis_tools/benchmark_cpu_amp.py [--repeat 3] [--warmup 1] [--threads N]
"""

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import List

import torch

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = 'demo/deformable-detr-refine-twostage_r18_shapes.py'  # under configs_root()


def time_mode(amp: bool, repeat: int, warmup: int) -> List[float]:
    """Seconds per train_step of the demo model, float32 (``amp=False``) or bf16 autocast."""
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    from mmdet_deformdetr import find_config
    from mmdet_deformdetr.engine import select_amp_optim_wrapper

    cfg = Config.fromfile(find_config(DEMO_CONFIG))
    if amp:
        select_amp_optim_wrapper(cfg, cuda_available=False)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    data = demo_mm_inputs(
        batch_size=8,
        image_shapes=[(3, 256, 256)] * 8,
        num_items=[1, 2, 3, 4, 5, 1, 2, 3],
        num_classes=5,
    )
    seconds = []
    for step in range(warmup + repeat):
        start = time.perf_counter()
        model.train_step(data, optim_wrapper)
        if step >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger

    import mmdet_deformdetr  # noqa: F401  (registers our modules)
    from mmdet_deformdetr.engine import cpu_bf16_support

    register_all_modules()
    # the optimizer builder logs every parameter's lr multiplier at INFO; keep warnings
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    native, evidence = cpu_bf16_support()
    print(f'CPU: native bf16 = {native} ({evidence}); {args.threads} threads')
    medians = {}
    for amp in (False, True):
        seconds = time_mode(amp, args.repeat, args.warmup)
        name = 'bf16 autocast (--amp)' if amp else 'float32'
        medians[amp] = statistics.median(seconds)
        print(
            f'{name}: median {medians[amp]:.2f} s/iter  ({", ".join(f"{s:.2f}" for s in seconds)})'
        )
    print(
        f'bf16 / float32 time ratio: {medians[True] / medians[False]:.2f} '
        f'(> 1: --amp is slower here)'
    )


if __name__ == '__main__':
    main()
