"""Time the optimizer step (gradient clipping + AdamW) with mmengine's one param group per
parameter against ``GroupedOptimWrapperConstructor``'s groups of equal settings, side by side.

Both wrappers are built from the config's ``optim_wrapper`` for two copies of one model; every
parameter gets the same random gradient; the two steps alternate ``--repeat`` times after
``--warmup`` and the medians and their ratio are printed.

    python tools/analysis_tools/benchmark_optim_groups.py [CONFIG] [--repeat 30] [--threads N]

(default CONFIG: the demo model, configs/demo/deformable-detr-refine-twostage_r18_shapes.py)
"""

import argparse
import copy
import statistics
import time

import torch

# a path, or a shipped config's name (mmdet_deformdetr.find_config)
DEMO_CONFIG = 'demo/deformable-detr-refine-twostage_r18_shapes.py'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', nargs='?', default=DEMO_CONFIG)
    parser.add_argument('--repeat', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    from mmdet_deformdetr import find_config  # (importing the package registers our modules)

    register_all_modules()
    cfg = Config.fromfile(find_config(args.config))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    optim_cfgs = {}
    for name, constructor in (
        ('one group per parameter', 'DefaultOptimWrapperConstructor'),
        ('grouped by settings', 'GroupedOptimWrapperConstructor'),
    ):
        optim_cfgs[name] = dict(copy.deepcopy(cfg.optim_wrapper), constructor=constructor)
    runs = {}
    for name, optim_cfg in optim_cfgs.items():
        replica = copy.deepcopy(model)
        wrapper = build_optim_wrapper(replica, optim_cfg)
        params = [p for p in replica.parameters() if p.requires_grad]
        runs[name] = (wrapper, params, [])
        print(f'{name}: {len(wrapper.optimizer.param_groups)} param groups')
    generator = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=generator) for p in runs[name][1]]
    for step in range(args.warmup + args.repeat):
        for wrapper, params, seconds in runs.values():
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            start = time.perf_counter()
            wrapper.step()
            wrapper.zero_grad()
            if step >= args.warmup:
                seconds.append(time.perf_counter() - start)
    medians = {name: statistics.median(run[2]) for name, run in runs.items()}
    base = medians['one group per parameter']
    for name, median in medians.items():
        print(f'{name:26s} {median * 1000:7.2f} ms per step  {median / base:.2f}x')


if __name__ == '__main__':
    main()
