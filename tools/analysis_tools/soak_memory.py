"""Host-memory soak test: train the demo config for thousands of iterations with dataloader
workers and record the memory of the training process and its workers (``HostMemoryHook``).

    python tools/analysis_tools/soak_memory.py [--iters 3000] [--interval 100] [--workers 2]
        [--warmup 500] [--work-dir work_dirs/soak_memory] [--max-growth 2.0]
        [--cfg-options KEY=VALUE ...]
    python tools/analysis_tools/soak_memory.py --analyze work_dirs/soak_memory/host_memory.csv

The model and data are the demo's (``configs/demo/deformable-detr-refine-twostage_r18_shapes.py``
on the synthetic shapes dataset, generated under ``data/`` as ``tools/demo.py`` does), trained in
float32 at one torch thread, with persistent workers, no validation and no checkpoints (what is
measured is the training loop). Written to the work dir: ``host_memory.csv`` (one row per sample),
``soak_memory.json`` (the growth of each series after warm-up) and ``soak_memory.png`` (the
curves). The growth of a series is its last sample against its first sample after warm-up, and
the least-squares slope over the same samples times their span (robust to one noisy sample);
both relative to the first post-warm-up sample. Exits 1 when a growth exceeds ``--max-growth``
percent.
"""

import argparse
import csv
import json
import os
import os.path as osp
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEMO_CONFIG = ROOT / 'configs' / 'demo' / 'deformable-detr-refine-twostage_r18_shapes.py'
#: the series whose growth is judged: the training process, and the whole tree by PSS
JUDGED = ('rss_main', 'pss_main', 'pss_total', 'anon_main', 'anon_workers')
SERIES = (
    'rss_main',
    'pss_main',
    'uss_main',
    'rss_workers',
    'pss_workers',
    'pss_total',
    'anon_main',
    'anon_workers',
)


def parse_args() -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=3000)
    parser.add_argument('--interval', type=int, default=100, help='iterations between samples')
    parser.add_argument('--workers', type=int, default=2, help='dataloader workers')
    parser.add_argument(
        '--warmup', type=int, default=500, help='iterations excluded from the growth'
    )
    parser.add_argument('--work-dir', default='work_dirs/soak_memory')
    parser.add_argument('--data-cache', default='data', help='folder of the generated datasets')
    parser.add_argument('--num-train', type=int, default=1000, help='generated train images')
    parser.add_argument('--threads', type=int, default=1, help='torch threads')
    parser.add_argument('--max-growth', type=float, default=2.0, help='percent; exit 1 above it')
    parser.add_argument('--analyze', metavar='CSV', help='only analyse (and plot) this CSV')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    return parser.parse_args()


def soak_config(args: argparse.Namespace, data_root: str):
    """The demo config trained for ``args.iters`` iterations with the memory hook, without
    validation or checkpoints."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.train_dataloader.dataset.data_root = data_root
    cfg.train_dataloader.num_workers = args.workers
    cfg.train_dataloader.persistent_workers = args.workers > 0
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=args.iters, val_interval=10**9)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator'):
        cfg[key] = None
    warmup = min(cfg.get('warmup_iters', 100), max(1, args.iters // 5))
    for sched in cfg.param_scheduler:
        if sched.type == 'LinearLR':
            sched.end = warmup
        else:
            sched.update(begin=warmup, end=args.iters, T_max=max(1, args.iters - warmup))
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger.interval = args.interval
    cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
        dict(
            type='HostMemoryHook',
            interval=args.interval,
            out_file=osp.join(args.work_dir, 'host_memory.csv'),
        )
    ]
    cfg.work_dir = args.work_dir
    cfg.merge_from_dict(args.cfg_options)
    return cfg


def read_samples(path: str) -> List[Dict[str, float]]:
    with open(path, newline='') as file:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]


def growth(samples: List[Dict[str, float]], key: str, warmup: int) -> Dict[str, float]:
    """Growth of ``key`` after ``warmup`` iterations, in percent of its first post-warm-up
    value: last against first, and the least-squares slope times the span."""
    kept = [sample for sample in samples if sample['iter'] >= warmup]
    if len(kept) < 2:
        raise ValueError(f'fewer than 2 samples after iteration {warmup}')
    xs = [sample['iter'] for sample in kept]
    ys = [sample[key] for sample in kept]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    first = ys[0]
    return dict(
        first_mb=round(first / 2**20, 1),
        last_mb=round(ys[-1] / 2**20, 1),
        min_mb=round(min(ys) / 2**20, 1),
        max_mb=round(max(ys) / 2**20, 1),
        last_vs_first_percent=round(100 * (ys[-1] - first) / first, 2) if first else 0.0,
        fitted_percent=round(100 * slope * (xs[-1] - xs[0]) / first, 2) if first else 0.0,
    )


def analyze(csv_path: str, warmup: int, max_growth: float) -> Dict[str, object]:
    """Growth of every series, written to ``soak_memory.json`` beside the CSV, and the plot."""
    samples = read_samples(csv_path)
    result = dict(
        csv=csv_path,
        samples=len(samples),
        iterations=int(samples[-1]['iter']),
        seconds=samples[-1]['seconds'],
        warmup=warmup,
        workers=int(samples[-1]['workers']),
        cpu=_cpu_name(),
        cores=os.cpu_count(),
        date=time.strftime('%Y-%m-%d'),
        growth={key: growth(samples, key, warmup) for key in SERIES if key in samples[0]},
        max_growth_percent=max_growth,
    )
    judged = [key for key in JUDGED if key in result['growth']]
    result['judged'] = judged
    worst = max(
        max(result['growth'][key]['last_vs_first_percent'], result['growth'][key]['fitted_percent'])
        for key in judged
    )
    result['worst_growth_percent'] = worst
    result['passed'] = worst <= max_growth
    folder = osp.dirname(csv_path)
    with open(osp.join(folder, 'soak_memory.json'), 'w') as file:
        json.dump(result, file, indent=2)
    plot(samples, warmup, osp.join(folder, 'soak_memory.png'), result)
    return result


def plot(samples: List[Dict[str, float]], warmup: int, path: str, result: dict) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    iters = [sample['iter'] for sample in samples]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    labels = {
        'rss_main': 'main process RSS',
        'pss_main': 'main process PSS',
        'rss_workers': f'workers RSS (sum of {result["workers"]})',
        'pss_workers': f'workers PSS (sum of {result["workers"]})',
        'pss_total': 'PSS, main + workers',
    }
    if 'anon_main' in samples[0]:
        labels['anon_main'] = 'main process, anonymous (RssAnon)'
    for key, label in labels.items():
        axis.plot(iters, [sample[key] / 2**20 for sample in samples], marker='.', label=label)
    axis.axvline(warmup, color='gray', linestyle='--', linewidth=1)
    axis.text(warmup, axis.get_ylim()[1], ' warm-up end', va='top', color='gray', fontsize=8)
    axis.set_xlabel('iteration')
    axis.set_ylabel('MB')
    axis.set_ylim(bottom=0)
    axis.set_title(
        f'Host memory, demo config, {result["workers"]} workers: after warm-up, the '
        f'largest change is {result["worst_growth_percent"]:+.2f} %',
        fontsize=10,
    )
    axis.legend(fontsize=8, loc='lower right')
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _cpu_name() -> str:
    from mmdet_deformdetr.analysis.hardware import cpu_name

    return cpu_name()


def report(result: Dict[str, object]) -> str:
    lines = [
        f'{result["iterations"]} iterations in {result["seconds"]:.0f} s, '
        f'{result["workers"]} workers, {result["samples"]} samples; {result["cpu"]}, '
        f'{result["cores"]} cores; growth after iteration {result["warmup"]}:'
    ]
    for key, values in result['growth'].items():
        lines.append(
            f'  {key:12s} {values["first_mb"]:8.1f} -> {values["last_mb"]:8.1f} MB '
            f'(min {values["min_mb"]:.1f}, max {values["max_mb"]:.1f}): '
            f'{values["last_vs_first_percent"]:+.2f} % last vs first, '
            f'{values["fitted_percent"]:+.2f} % fitted'
        )
    verdict = 'within' if result['passed'] else 'ABOVE'
    lines.append(
        f'worst growth of {", ".join(result["judged"])}: {result["worst_growth_percent"]:+.2f} % '
        f'({verdict} the {result["max_growth_percent"]} % limit)'
    )
    return '\n'.join(lines)


def main() -> None:
    args = parse_args()
    if args.analyze:
        result = analyze(args.analyze, args.warmup, args.max_growth)
        print(report(result), flush=True)
        sys.exit(0 if result['passed'] else 1)

    import torch
    from mmengine.runner import Runner

    import mmdet_deformdetr  # noqa: F401  (registers HostMemoryHook and our modules)
    from mmdet_deformdetr.datasets import ShapesConfig, generate_shapes_dataset

    torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # data/ and work_dirs/ relative to the repository root, as the demo
    os.makedirs(args.work_dir, exist_ok=True)
    csv_path = osp.join(args.work_dir, 'host_memory.csv')
    if osp.exists(csv_path):
        os.remove(csv_path)  # one run per file
    name = 'shapes_seed0' if args.num_train == 1000 else f'shapes_seed0_{args.num_train}x200'
    data_root = osp.join(args.data_cache, name) + '/'
    generate_shapes_dataset(data_root, ShapesConfig(seed=0, num_train=args.num_train))
    Runner.from_cfg(soak_config(args, data_root)).train()
    result = analyze(csv_path, args.warmup, args.max_growth)
    print(report(result), flush=True)
    sys.exit(0 if result['passed'] else 1)


if __name__ == '__main__':
    main()
