"""Latency of an exported Deformable DETR in onnxruntime and OpenVINO (CPU) against our PyTorch CPU
path, in one run, as ratios.

    python tools/analysis_tools/benchmark_onnx.py [--config CONFIG] [--onnx model.onnx]
        [--size 800 1216] [--repeat 5] [--warmup 2] [--threads 2] [--with-reference]
        [--backends onnxruntime openvino] [--ov-precisions f32 bf16]

The model is the config's (default: the R-50 primitive config) with random weights (initialised,
then moved off the zero initialisations, so every branch computes); unless ``--onnx`` names an
earlier export of the same model, it is exported first (tools/deployment/export_onnx.py's code,
opset 18; the export is not timed). One normalised ``--size`` image, batch 1, is then run through:

* ``pytorch``: the exported function in eager PyTorch (backbone, transformer, head, top-k), with
  our C++ deformable-attention kernel (``impl='auto'`` on CPU), what ``tools/test.py`` runs;
* ``onnxruntime``: the ONNX file, CPU execution provider, ``--threads`` intra-op threads;
* ``openvino f32`` / ``openvino bf16``: the same file compiled by OpenVINO's CPU plugin with
  ``--threads`` inference threads, latency hint, each ``--ov-precisions`` inference precision;
* ``pytorch-reference`` (``--with-reference``): eager PyTorch on the ``grid_sample`` path that
  the graph contains.

Runs alternate between the paths (so that load from other processes hits both alike); printed:
the median of ``--repeat`` timed runs per path after ``--warmup`` untimed ones, the threads, each
path's ratio to pytorch and its largest output differences to pytorch (boxes, scores matched by
rank; labels identical or not).
"""

import argparse
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmdet_deformdetr import configs_root  # (importing the package registers our modules)
from mmdet_deformdetr.analysis.hardware import cpu_name
from mmdet_deformdetr.deploy import OV_PRECISIONS, OnnxDetector, export_onnx
from mmdet_deformdetr.deploy.exportable import ExportableDeformDETR
from mmdet_deformdetr.models.layers import MSDeformAttn

PRIMITIVE = configs_root() / 'deformable_detr' / 'deformable-detr_r50_16xb2-50e_coco.py'


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='onnxruntime vs PyTorch CPU latency')
    parser.add_argument('--config', default=str(PRIMITIVE), help='model config')
    parser.add_argument('--onnx', help='reuse this export of the same model and seed')
    parser.add_argument('--size', type=int, nargs=2, default=(800, 1216), metavar=('H', 'W'))
    parser.add_argument('--repeat', type=int, default=5, help='timed runs per path')
    parser.add_argument('--warmup', type=int, default=2, help='untimed runs per path first')
    parser.add_argument('--threads', type=int, default=2, help='intra-op threads, both paths')
    parser.add_argument(
        '--with-reference',
        action='store_true',
        help='also time eager PyTorch on the grid_sample attention',
    )
    parser.add_argument(
        '--backends',
        nargs='+',
        default=['onnxruntime', 'openvino'],
        choices=['onnxruntime', 'openvino'],
        help='runtimes to time',
    )
    parser.add_argument(
        '--ov-precisions',
        nargs='+',
        default=list(OV_PRECISIONS),
        choices=OV_PRECISIONS,
        help="OpenVINO's inference precision hints to time",
    )
    parser.add_argument('--seed', type=int, default=0, help='seed of the random weights')
    return parser.parse_args()


def build_model(config: str, seed: int) -> torch.nn.Module:
    from mmdet_deformdetr.analysis.random_model import build_random_model

    cfg = Config.fromfile(config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return build_random_model(cfg.model, seed)


def set_impl(model: torch.nn.Module, impl: str) -> None:
    for module in model.modules():
        if isinstance(module, MSDeformAttn):
            module.impl = impl


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.config, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = args.onnx
        if onnx_path is None:
            onnx_path = str(Path(folder) / 'model.onnx')
            start = time.perf_counter()
            export_onnx(model, onnx_path)
            print(f'exported in {time.perf_counter() - start:.0f} s (not timed below)')
        cfg = Config.fromfile(args.config)
        runtimes: Dict[str, OnnxDetector] = {}
        for backend in args.backends:
            for precision in args.ov_precisions if backend == 'openvino' else ['f32']:
                label = f'openvino {precision}' if backend == 'openvino' else backend
                runtimes[label] = OnnxDetector(
                    onnx_path, cfg, args.threads, backend=backend, ov_precision=precision
                )
        images = torch.randn(1, 3, *args.size, generator=torch.Generator().manual_seed(0))
        module = ExportableDeformDETR(model)

        def eager(impl: str) -> Callable[[], tuple]:
            def run():
                set_impl(model, impl)
                with torch.no_grad():
                    return tuple(t.numpy() for t in module(images))

            return run

        paths: Dict[str, Callable[[], tuple]] = {'pytorch': eager('auto')}
        for label, runtime in runtimes.items():
            paths[label] = functools.partial(runtime.run, images)
        if args.with_reference:
            paths['pytorch-reference'] = eager('pytorch')
        times = {name: [] for name in paths}
        outputs = {}
        for index in range(args.warmup + args.repeat):
            for name, run in paths.items():
                start = time.perf_counter()
                outputs[name] = run()
                if index >= args.warmup:
                    times[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f'{Path(args.config).name}, random weights, one {args.size[0]}x{args.size[1]} image, '
        f'{args.threads} intra-op threads, median of {args.repeat} after {args.warmup} '
        'warm-up'
    )
    print(f'CPU: {cpu_name()}, {os.cpu_count()} logical cores')
    print(f'{"path":<20} {"median":>9} {"/ pytorch":>10}  max |box diff|  max |score diff|  labels')
    expected = outputs['pytorch']
    for name, median in medians.items():
        row = f'  {name:<18} {1000 * median:6.0f} ms {median / medians["pytorch"]:10.2f}'
        if name != 'pytorch':
            got = outputs[name]
            box_diff = abs(got[0] - expected[0]).max()
            score_diff = abs(got[1] - expected[1]).max()
            same = 'identical' if (got[2] == expected[2]).all() else 'differ'
            row += f'  {box_diff:11.2e} px  {score_diff:16.2e}  {same}'
        print(row)


if __name__ == '__main__':
    main()
