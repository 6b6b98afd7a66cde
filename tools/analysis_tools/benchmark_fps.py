"""Inference speed (images per second, batch 1) of a config on CPU or GPU, on dataset images at
the test pipeline's resolution.

    python tools/analysis_tools/benchmark_fps.py CONFIG [CHECKPOINT] [--device cpu|cuda:0]
        [--num-images 50] [--warmup 5] [--threads N] [--data-root DIR] [--ann-file FILE]
        [--img-prefix DIR] [--precision fp32|bf16|auto] [--cfg-options ...]

mmdet's ``benchmark.py --task inference`` moves the model to CUDA unconditionally (``.cuda()``),
so it cannot measure a CPU; this tool can, and names the device it ran on. Timed per image:
``model.test_step`` (data preprocessor, forward, post-process), not the loading and resizing of
the image (done first, for all images). Without a checkpoint the weights are random, which does
not change the cost. Printed: FPS over the timed images (after ``--warmup`` untimed ones), and
the median and spread of the per-image latency.
"""

import argparse
import statistics
import time

import torch
from mmdet.registry import MODELS
from mmengine.config import Config, DictAction
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

import mmdet_deformdetr  # noqa: F401  (registers our modules, safe checkpoint loading)
from mmdet_deformdetr.analysis.data import eval_dataset
from mmdet_deformdetr.analysis.hardware import cpu_name
from mmdet_deformdetr.engine.inference_precision import (
    add_precision_argument,
    inference_autocast,
    resolve_precision,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Inference FPS of a config, batch 1')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint (default: random weights)')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda:N'")
    parser.add_argument('--num-images', type=int, default=50, help='images timed')
    parser.add_argument('--warmup', type=int, default=5, help='untimed images run first')
    parser.add_argument(
        '--threads',
        type=int,
        default=None,
        help="torch intra-op threads on CPU (default: torch's, one per core)",
    )
    parser.add_argument('--data-root', help='override val_dataloader.dataset.data_root')
    parser.add_argument('--ann-file', help='override the val annotation file')
    parser.add_argument('--img-prefix', help='override data_prefix.img of the val set')
    add_precision_argument(parser)
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config settings, KEY=VALUE'
    )
    return parser.parse_args()


def device_name(device: torch.device) -> str:
    """What the timing ran on, in words."""
    if device.type == 'cuda':
        return f'{torch.cuda.get_device_name(device)} ({device})'
    return f'{cpu_name()}, {torch.get_num_threads()} torch threads'


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit(f'--device {args.device}: torch sees no CUDA device; use --device cpu')
    precision, reason = resolve_precision(args.precision, device.type)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset = eval_dataset(cfg, args.data_root, args.ann_file, args.img_prefix)
    total = args.warmup + args.num_images

    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, map_location='cpu')
    model = model.to(device).eval()
    # images cycle when the set is smaller than warm-up + timed
    batches = [pseudo_collate([dataset[index % len(dataset)]]) for index in range(total)]

    latencies = []
    sizes = []
    with torch.no_grad(), inference_autocast(precision, device.type):
        for index, batch in enumerate(batches):
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            results = model.test_step(batch)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            if index >= args.warmup:
                latencies.append(time.perf_counter() - start)
                sizes.append(tuple(results[0].img_shape))
    fps = len(latencies) / sum(latencies)
    median = statistics.median(latencies)
    print(f'{args.config} on {device_name(device)}, {precision} ({reason})')
    mean_h = statistics.fmean(h for h, _ in sizes)
    mean_w = statistics.fmean(w for _, w in sizes)
    print(
        f'{len(latencies)} images (after {args.warmup} warm-up), batch 1, mean input '
        f'{mean_h:.0f} x {mean_w:.0f}'
    )
    print(
        f'FPS: {fps:.2f}   latency: median {1000 * median:.0f} ms, min '
        f'{1000 * min(latencies):.0f} ms, max {1000 * max(latencies):.0f} ms'
    )


if __name__ == '__main__':
    main()
