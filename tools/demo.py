"""The demo: generate the synthetic shapes dataset, train a small two-stage Deformable DETR on CPU
with MMEngine's Runner, evaluate it with CocoMetric, and draw predictions and training curves.

    python tools/demo.py [--quick | --long | --iters N] [--seed S] [--num-classes C]
                         [--cfg-options KEY=VALUE ...]

(``bash tools/run_demo.sh`` sets the environment up first, then runs this.) While training,
mmengine's log prints a progress line (iteration, losses, ETA) every few iterations and the
model is evaluated on the first ``--val-subset`` val images every ``1 / --num-evals`` of the
run (cheap: a few seconds each), with a checkpoint saved at each evaluation; the final number is
the COCO bbox mAP on the whole val split. Artefacts in the work dir (default ``work_dirs/demo/``):
``iter_N.pth`` (checkpoint), ``coco_bbox.txt`` / ``metrics.json`` (COCO table of the whole val
split), ``predictions.png`` (ground truth | prediction on val images), ``training_curves.png``
(loss and bbox mAP against the iteration), ``summary.json`` (paths, timings, load average, the
metrics), and TensorBoard logs when ``tensorboard`` is installed (``--no-tensorboard`` to skip).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import os.path as osp
import time
from pathlib import Path

import torch
from mmengine.config import Config, DictAction

from mmdet_deformdetr import configs_root

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = configs_root() / 'demo' / 'deformable-detr-refine-twostage_r18_shapes.py'
# name -> (iterations, evaluations during training incl. the last one, train images, val images)
PRESETS = {
    'quick': (100, 1, 1000, 200),
    'default': (1650, 5, 1000, 200),
    'long': (2000, 8, 1000, 200),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default=str(DEFAULT_CONFIG))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--quick', action='store_true', help='smoke run, about 2 minutes')
    mode.add_argument(
        '--long', action='store_true', help='2000 iterations (a higher mAP, ~1.2x the time)'
    )
    parser.add_argument('--iters', type=int, help='training iterations (overrides the preset)')
    parser.add_argument(
        '--num-evals',
        type=int,
        help='evaluations on the val subset spread over training, the last at '
        'the end (each saves a checkpoint)',
    )
    parser.add_argument(
        '--val-subset',
        type=int,
        default=50,
        help='val images of the evaluations during training (the final '
        'evaluation uses the whole val split)',
    )
    parser.add_argument('--seed', type=int, default=0, help='dataset and training seed')
    parser.add_argument('--num-train', type=int, help='generated train images')
    parser.add_argument('--num-val', type=int, help='generated val images')
    parser.add_argument(
        '--num-classes', type=int, help='generate only the first N of the 5 shape classes'
    )
    parser.add_argument(
        '--data-root',
        help='use this COCO-format dataset root; skip generation '
        '(set ann files / prefixes / classes with --cfg-options)',
    )
    parser.add_argument(
        '--data-cache',
        default='data',
        help='folder of the generated datasets (one sub-folder per seed)',
    )
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument(
        '--threads',
        type=int,
        default=os.cpu_count() or 1,
        help='torch CPU threads of the training process (at most)',
    )
    parser.add_argument(
        '--fixed-threads',
        action='store_true',
        help='keep --threads; by default training switches to 1 thread while '
        'that is faster (a CPU shared with other jobs)',
    )
    parser.add_argument(
        '--precision',
        choices=('auto', 'fp32', 'bf16'),
        default='auto',
        help='training precision; auto: bf16 autocast where the CPU computes bfloat16 '
        'natively (AMX / AVX512-BF16), float32 elsewhere (the reason is logged)',
    )
    parser.add_argument('--num-vis', type=int, default=6, help='val images in predictions.png')
    parser.add_argument(
        '--no-tensorboard',
        action='store_true',
        help='no TensorBoard logs even when tensorboard is installed',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        default={},
        help='override config keys, e.g. model.num_queries=100',
    )
    return parser.parse_args()


def set_schedule(cfg: Config, iters: int, num_evals: int) -> None:
    """Rewrite the config's iteration schedule: loop length, evaluation and checkpoint points,
    warm-up + cosine ends."""
    num_evals = max(1, min(num_evals, iters))
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = max(1, iters // num_evals)
    warmup = min(cfg.get('warmup_iters', 100), max(1, iters // 5))
    for sched in cfg.param_scheduler:
        if sched.type == 'LinearLR':
            sched.end = warmup
        else:
            sched.update(begin=warmup, end=iters, T_max=max(1, iters - warmup))
    # a checkpoint at every evaluation (not only at the end), the last one always kept
    cfg.default_hooks.checkpoint.update(interval=cfg.train_cfg.val_interval, save_last=True)


def point_at_data(cfg: Config, data_root: str) -> None:
    """Use ``data_root`` for training and validation (sync_dependent_keys does the rest)."""
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = data_root


def sync_dependent_keys(cfg: Config, val_subset: int = 0) -> None:
    """Keys that follow the datasets (also after --cfg-options): the test loader and evaluator
    are the whole val split; validation during training reads its first ``val_subset`` images
    (0: all); the number of classes follows the train classes."""
    val = cfg.val_dataloader.dataset
    cfg.val_evaluator.ann_file = osp.join(val.data_root, val.ann_file)
    cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    cfg.test_evaluator = copy.deepcopy(cfg.val_evaluator)
    if val_subset > 0:
        cfg.val_dataloader.dataset.ann_file, cfg.val_evaluator.ann_file = _subset_annotations(
            val.data_root, val.ann_file, val_subset
        )
    cfg.model.bbox_head.num_classes = len(cfg.train_dataloader.dataset.metainfo.classes)


def _subset_annotations(data_root: str, ann_file: str, num_images: int) -> tuple[str, str]:
    """A COCO file of the first ``num_images`` images (ann_file relative to data_root, and the
    full path for the evaluator); CocoMetric scores every image of its file, so the cheap
    evaluations need a file of their own."""
    source = Path(data_root) / ann_file
    name = f'{source.stem}_first{num_images}.json'
    target = source.with_name(name)
    if not target.is_file() or target.stat().st_mtime < source.stat().st_mtime:
        coco = json.loads(source.read_text())
        images = coco['images'][:num_images]
        kept = {image['id'] for image in images}
        coco.update(
            images=images, annotations=[a for a in coco['annotations'] if a['image_id'] in kept]
        )
        partial = target.with_name(f'.{name}.{os.getpid()}.tmp')
        partial.write_text(json.dumps(coco))
        os.replace(partial, target)
    relative = str(Path(ann_file).with_name(name))
    return relative, str(target)


def use_tensorboard(cfg: Config, disabled: bool) -> bool:
    """Add mmengine's TensorBoard backend when tensorboard is installed (and not disabled)."""
    if disabled or importlib.util.find_spec('tensorboard') is None:
        return False
    backends = cfg.visualizer.setdefault('vis_backends', [])
    if not any(b['type'] == 'TensorboardVisBackend' for b in backends):
        backends.append(dict(type='TensorboardVisBackend'))
    cfg.vis_backends = backends
    return True


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
        from mmdet_deformdetr.datasets import CLASSES, ShapesConfig, generate_shapes_dataset

        classes = CLASSES[: args.num_classes] if args.num_classes else CLASSES
        shapes = ShapesConfig(
            seed=args.seed,
            num_train=args.num_train or num_train,
            num_val=args.num_val or num_val,
            classes=classes,
        )
        # cached by parameters: a second run with the same ones reuses the files
        name = f'shapes_seed{args.seed}'
        if (shapes.num_train, shapes.num_val) != (num_train, num_val):
            name += f'_{shapes.num_train}x{shapes.num_val}'
        if len(classes) != len(CLASSES):
            name += f'_{len(classes)}classes'
        data_root = osp.join(args.data_cache, name) + '/'
        print(
            f'[demo] dataset {data_root} (seed {args.seed}, {len(classes)} classes, '
            f'{shapes.num_train} train / {shapes.num_val} val images)',
            flush=True,
        )
        generate_shapes_dataset(data_root, shapes)
        point_at_data(cfg, data_root)
        for loader in (cfg.train_dataloader, cfg.val_dataloader):
            loader.dataset.metainfo = dict(classes=classes)
    data_time = time.time() - start
    set_schedule(cfg, iters, num_evals)
    cfg.randomness = dict(seed=args.seed)  # --cfg-options randomness.seed=N: another training seed
    cfg.merge_from_dict(args.cfg_options)
    sync_dependent_keys(cfg, args.val_subset)
    cfg.work_dir = args.work_dir
    cfg.test_evaluator.outfile_prefix = osp.join(args.work_dir, 'val_detections')
    tensorboard = use_tensorboard(cfg, args.no_tensorboard)
    from shapes_demo import choose_precision

    args.precision, reason = choose_precision(cfg, args.precision)
    print(f'[demo] precision: {reason}', flush=True)
    run(cfg, args, start, data_time, tensorboard)


def run(
    cfg: Config, args: argparse.Namespace, start: float, data_time: float, tensorboard: bool
) -> None:
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
    if tensorboard:
        print(f'[demo] TensorBoard: tensorboard --logdir {runner.log_dir}', flush=True)
    train_start = time.time()
    runner.train()
    train_time = time.time() - train_start
    test_start = time.time()
    metrics = runner.test()  # the whole val split
    test_time = time.time() - test_start

    table = write_coco_table(
        metrics,
        cfg.test_evaluator.ann_file,
        cfg.test_evaluator.outfile_prefix + '.bbox.json',
        work_dir / 'coco_bbox.txt',
        work_dir / 'metrics.json',
    )
    print(table, flush=True)
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    draw_prediction_grid(
        model,
        runner.test_dataloader.dataset,
        runner.visualizer,
        work_dir / 'predictions.png',
        num_images=args.num_vis,
    )
    plot_training_curves(
        Path(runner.log_dir) / 'vis_data' / 'scalars.json',
        work_dir / 'training_curves.png',
        final=(cfg.train_cfg.max_iters, metrics.get('coco/bbox_mAP')),
    )
    checkpoint = work_dir / f'iter_{cfg.train_cfg.max_iters}.pth'
    summary = dict(
        checkpoint=str(checkpoint),
        table=str(work_dir / 'coco_bbox.txt'),
        metrics_json=str(work_dir / 'metrics.json'),
        predictions_png=str(work_dir / 'predictions.png'),
        curves_png=str(work_dir / 'training_curves.png'),
        log_dir=runner.log_dir,
        iterations=cfg.train_cfg.max_iters,
        bbox_mAP=metrics.get('coco/bbox_mAP'),
        val_subset_history=[
            dict(iter=i, bbox_mAP=m.get('coco/bbox_mAP')) for i, m in keeper.history
        ],
        seconds=dict(
            data=round(data_time, 1),
            train=round(train_time, 1),
            final_eval=round(test_time, 1),
            total=round(time.time() - start, 1),
        ),
        load_average=os.getloadavg(),
        threads=args.threads,
        precision=args.precision,
    )
    (work_dir / 'summary.json').write_text(json.dumps(summary, indent=2))
    print(
        f'[demo] bbox mAP {summary["bbox_mAP"]} on the {len(runner.test_dataloader.dataset)} '
        f'val images, {summary["seconds"]["total"]} s in all; artefacts in {work_dir}/: '
        f'{checkpoint.name}, coco_bbox.txt, metrics.json, predictions.png, '
        'training_curves.png, summary.json',
        flush=True,
    )


if __name__ == '__main__':
    main()
