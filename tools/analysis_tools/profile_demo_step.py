"""Where a training iteration of the demo goes: time every phase of ``train_step`` on real batches.

The model, data pipeline, optimiser and precision are the demo's (``tools/demo.py``'s config, the
generated shapes dataset under ``--data-root``, bf16 autocast where ``--precision`` says so). Each
iteration is split into: data (the train dataloader's ``next``, workers included), preprocess
(``data_preprocessor``), backbone + neck, transformer forward, head (branches), matching (the
Hungarian targets), losses (the rest of the criterion), backward, optimiser (gradient clipping +
AdamW + zero_grad). The medians over ``--repeat`` iterations after ``--warmup`` are printed with
their share of the whole; ``--torch-profile N`` also prints torch's op table of N iterations.

    python tools/analysis_tools/profile_demo_step.py [--data-root data/shapes_seed0/]
        [--precision auto|fp32|bf16] [--repeat 20] [--warmup 5] [--threads N]
        [--cfg-options KEY=VALUE ...] [--torch-profile 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import torch
from mmengine.config import Config, DictAction
from phase_timer import PhaseTimer

ROOT = Path(__file__).resolve().parents[2]
# a path, or a shipped config's name (mmdet_deformdetr.find_config)
DEMO_CONFIG = 'demo/deformable-detr-refine-twostage_r18_shapes.py'
PHASES = (
    'data',
    'preprocess',
    'backbone+neck',
    'transformer',
    'head',
    'matching',
    'losses',
    'backward',
    'optimizer',
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default=DEMO_CONFIG)
    parser.add_argument('--data-root', default='data/shapes_seed0/')
    parser.add_argument('--precision', choices=('auto', 'fp32', 'bf16'), default='auto')
    parser.add_argument('--repeat', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--torch-profile', type=int, default=0, metavar='N')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    return parser.parse_args()


def build(args: argparse.Namespace):
    """The demo's runner pieces: model, optim wrapper, train dataloader, from its config."""
    from mmengine.runner import Runner

    sys.path.insert(0, str(ROOT / 'tools'))
    from demo import point_at_data, sync_dependent_keys
    from shapes_demo import choose_precision

    from mmdet_deformdetr import find_config

    cfg = Config.fromfile(find_config(args.config))
    point_at_data(cfg, args.data_root)
    cfg.merge_from_dict(args.cfg_options)
    sync_dependent_keys(cfg)
    precision, reason = choose_precision(cfg, args.precision)
    print(f'precision: {reason}')
    cfg.work_dir = str(ROOT / 'work_dirs' / 'profile_demo_step')
    cfg.log_level = 'WARNING'
    runner = Runner.from_cfg(cfg)
    model = runner.model
    optim_wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
    loader = runner.build_dataloader(cfg.train_dataloader)
    return model, optim_wrapper, loader, precision


def instrument(model, timer: PhaseTimer) -> None:
    """Time the model's phases by wrapping its methods on this instance."""
    model.extract_feat = timer.wrap('backbone+neck', model.extract_feat)
    model.transformer.forward = timer.wrap('transformer', model.transformer.forward)
    head = model.bbox_head
    head.forward = timer.wrap('head', head.forward)
    head.criterion.targets = timer.wrap('matching', head.criterion.targets)
    head.criterion.forward = timer.wrap('losses', head.criterion.forward)


def train_iteration(model, optim_wrapper, batches, timer: PhaseTimer) -> None:
    """``model.train_step`` spelt out so each phase is timed on its own."""
    with timer('data'):
        data = next(batches)
    with optim_wrapper.optim_context(model):
        with timer('preprocess'):
            data = model.data_preprocessor(data, True)
        losses = model._run_forward(data, mode='loss')
        loss, _ = model.parse_losses(losses)
    with timer('backward'):
        optim_wrapper.backward(loss)
    with timer('optimizer'):
        optim_wrapper.step()
        optim_wrapper.zero_grad()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model, optim_wrapper, loader, precision = build(args)
    model.train()
    timer = PhaseTimer()
    instrument(model, timer)
    batches = iter(loader)
    totals: List[float] = []
    per_phase: Dict[str, List[float]] = defaultdict(list)
    for step in range(args.warmup + args.repeat):
        start = time.perf_counter()
        train_iteration(model, optim_wrapper, batches, timer)
        total = time.perf_counter() - start
        phases = timer.pop()
        if step < args.warmup:
            continue
        totals.append(total)
        # nested phases: matching runs inside losses; the losses line is the rest
        phases['losses'] = phases.get('losses', 0.0) - phases.get('matching', 0.0)
        for name in PHASES:
            per_phase[name].append(phases.get(name, 0.0))
    median_total = statistics.median(totals)
    print(
        f'{precision}, {args.threads} threads, batch {loader.batch_size}: median '
        f'{median_total * 1000:.0f} ms per iteration over {len(totals)}'
    )
    accounted = 0.0
    for name in PHASES:
        median = statistics.median(per_phase[name])
        accounted += median
        print(f'  {name:<14} {median * 1000:7.1f} ms  {100 * median / median_total:5.1f} %')
    print(f'  {"(other)":<14} {(median_total - accounted) * 1000:7.1f} ms')
    if args.torch_profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.torch_profile):
                train_iteration(model, optim_wrapper, batches, timer)
        print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=30))


if __name__ == '__main__':
    main()
