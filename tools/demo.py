"""The demo: generate the synthetic shapes dataset, train a small two-stage Deformable DETR on CPU
with MMEngine's Runner, evaluate it with CocoMetric, and draw predictions and training curves.

    python tools/demo.py [--quick | --long | --iters N] [--seed S] [--cfg-options KEY=VALUE ...]

(``bash tools/run_demo.sh`` sets the environment up first, then runs this.) Artefacts in the work
dir (default ``work_dirs/demo/``): ``iter_N.pth`` (checkpoint), ``coco_bbox.txt`` / ``metrics.json``
(COCO table), ``predictions.png`` (ground truth | prediction on val images), ``training_curves.png``
(loss and bbox mAP against the iteration), ``summary.json`` (paths, timings, the final metrics).
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import time
from pathlib import Path

import torch
from mmengine.config import Config, DictAction

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / 'configs/demo/deformable-detr-refine-twostage_r18_shapes.py'
# name -> (iterations, evaluations during training incl. the last one, train images, val images);
# ~0.85 s per iteration on 2 idle cores, ~15 s per evaluation of the 200 val images
PRESETS = {
    'quick': (100, 1, 1000, 200),
    'default': (1200, 2, 1000, 200),
    'long': (2400, 4, 1000, 200),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default=str(DEFAULT_CONFIG))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--quick', action='store_true', help='smoke run, about 3 minutes')
    mode.add_argument('--long', action='store_true', help='about 40 minutes, higher mAP')
    parser.add_argument('--iters', type=int, help='training iterations (overrides the preset)')
    parser.add_argument('--num-evals', type=int,
                        help='evaluations spread over training, the last at the end')
    parser.add_argument('--seed', type=int, default=0, help='dataset and training seed')
    parser.add_argument('--num-train', type=int, help='generated train images')
    parser.add_argument('--num-val', type=int, help='generated val images')
    parser.add_argument('--data-root', help='use this COCO-format dataset root; skip generation '
                        '(set ann files / prefixes / classes with --cfg-options)')
    parser.add_argument('--data-cache', default='data',
                        help='folder of the generated datasets (one sub-folder per seed)')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1,
                        help='torch CPU threads of the training process (at most)')
    parser.add_argument('--fixed-threads', action='store_true',
                        help='keep --threads; by default training switches to 1 thread while '
                        'that is faster (a CPU shared with other jobs)')
    parser.add_argument('--num-vis', type=int, default=6, help='val images in predictions.png')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config keys, e.g. model.num_queries=100')
    return parser.parse_args()


def set_schedule(cfg: Config, iters: int, num_evals: int) -> None:
    """Rewrite the config's iteration schedule: loop length, evaluation points, warm-up + cosine
    ends, checkpoint at the end."""
    num_evals = max(1, min(num_evals, iters))
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = max(1, iters // num_evals)
    warmup = min(cfg.get('warmup_iters', 100), max(1, iters // 10))
    for sched in cfg.param_scheduler:
        if sched.type == 'LinearLR':
            sched.end = warmup
        else:
            sched.update(begin=warmup, end=iters, T_max=max(1, iters - warmup))
    cfg.default_hooks.checkpoint.interval = iters


def point_at_data(cfg: Config, data_root: str) -> None:
    """Use ``data_root`` for training and validation (sync_dependent_keys does the rest)."""
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = data_root


def sync_dependent_keys(cfg: Config) -> None:
    """Keys that follow the datasets (also after --cfg-options): evaluator ann file, test loader,
    number of classes."""
    val = cfg.val_dataloader.dataset
    cfg.val_evaluator.ann_file = osp.join(val.data_root, val.ann_file)
    cfg.test_dataloader = cfg.val_dataloader
    cfg.test_evaluator = cfg.val_evaluator
    cfg.model.bbox_head.num_classes = len(cfg.train_dataloader.dataset.metainfo.classes)


def main() -> None:
    args = parse_args()
    start = time.time()
    torch.set_num_threads(args.threads)
    preset = 'quick' if args.quick else 'long' if args.long else 'default'
    iters, num_evals, num_train, num_val = PRESETS[preset]
    iters = args.iters or iters
    num_evals = args.num_evals or num_evals
    os.chdir(ROOT)  # data/ and work_dirs/ are relative to the repository root

    cfg = Config.fromfile(args.config)
    if args.data_root:
        point_at_data(cfg, args.data_root)
    else:
        from mmdet_deformdetr.datasets import ShapesConfig, generate_shapes_dataset
        shapes = ShapesConfig(seed=args.seed, num_train=args.num_train or num_train,
                              num_val=args.num_val or num_val)
        # cached by seed: a second run with the same parameters reuses the files
        name = f'shapes_seed{args.seed}'
        if (shapes.num_train, shapes.num_val) != (num_train, num_val):
            name += f'_{shapes.num_train}x{shapes.num_val}'
        data_root = osp.join(args.data_cache, name) + '/'
        print(f'[demo] dataset {data_root} (seed {args.seed}, {shapes.num_train} train / '
              f'{shapes.num_val} val images)', flush=True)
        generate_shapes_dataset(data_root, shapes)
        point_at_data(cfg, data_root)
    data_time = time.time() - start
    set_schedule(cfg, iters, num_evals)
    cfg.merge_from_dict(args.cfg_options)
    sync_dependent_keys(cfg)
    cfg.work_dir = args.work_dir
    cfg.randomness = dict(seed=args.seed)
    cfg.val_evaluator.outfile_prefix = osp.join(args.work_dir, 'val_detections')
    run(cfg, args, start, data_time)


def run(cfg: Config, args: argparse.Namespace, start: float, data_time: float) -> None:
    from mmengine.runner import Runner
    from shapes_demo import (
        MetricsKeeper,
        ThreadCountTuner,
        draw_prediction_grid,
        plot_training_curves,
        write_coco_table,
    )

    work_dir = Path(cfg.work_dir)
    runner = Runner.from_cfg(cfg)
    keeper = MetricsKeeper()
    runner.register_hook(keeper)
    if not args.fixed_threads:
        runner.register_hook(ThreadCountTuner(max_threads=args.threads))
    train_start = time.time()
    runner.train()
    train_time = time.time() - train_start

    metrics = keeper.last
    table = write_coco_table(metrics, cfg.val_evaluator.ann_file,
                             cfg.val_evaluator.outfile_prefix + '.bbox.json',
                             work_dir / 'coco_bbox.txt', work_dir / 'metrics.json')
    print(table, flush=True)
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    draw_prediction_grid(model, runner.val_dataloader.dataset, runner.visualizer,
                         work_dir / 'predictions.png', num_images=args.num_vis)
    plot_training_curves(Path(runner.log_dir) / 'vis_data' / 'scalars.json',
                         work_dir / 'training_curves.png')
    checkpoint = work_dir / f'iter_{cfg.train_cfg.max_iters}.pth'
    summary = dict(
        checkpoint=str(checkpoint), table=str(work_dir / 'coco_bbox.txt'),
        metrics_json=str(work_dir / 'metrics.json'),
        predictions_png=str(work_dir / 'predictions.png'),
        curves_png=str(work_dir / 'training_curves.png'), log_dir=runner.log_dir,
        iterations=cfg.train_cfg.max_iters, bbox_mAP=metrics.get('coco/bbox_mAP'),
        history=[dict(iter=i, bbox_mAP=m.get('coco/bbox_mAP')) for i, m in keeper.history],
        seconds=dict(data=round(data_time, 1), train_and_eval=round(train_time, 1),
                     total=round(time.time() - start, 1)),
        load_average=os.getloadavg())
    (work_dir / 'summary.json').write_text(json.dumps(summary, indent=2))
    print(f'[demo] bbox mAP {summary["bbox_mAP"]}, {summary["seconds"]["total"]} s in all; '
          f'artefacts in {work_dir}/: {checkpoint.name}, coco_bbox.txt, metrics.json, '
          'predictions.png, training_curves.png, summary.json', flush=True)


if __name__ == '__main__':
    main()
