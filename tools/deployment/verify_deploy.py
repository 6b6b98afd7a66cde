"""Check an exported file against PyTorch on a test split: mAP, differences, latency, per backend.

    python tools/deployment/verify_deploy.py CONFIG CHECKPOINT MODEL.onnx
        [--backends onnxruntime openvino] [--ov-precision f32|bf16] [--pytorch-bf16]
        [--data-root DIR --ann-file FILE --img-prefix DIR] [--max-images N] [--threads N]
        [--tol-map 0.001] [--tol-box 1.0] [--tol-score 1e-3] [--tol-labels 0.99]
        [--cfg-options KEY=VALUE ...]

The split is the config's test set, what ``tools/test.py`` evaluates (``test_dataloader.dataset``
and ``test_evaluator.ann_file``), or the COCO-format set named by ``--data-root`` / ``--ann-file``
/ ``--img-prefix``. Every image goes through the model (``test_step``, batch 1) and through each
backend; printed per path: COCO bbox mAP, and per backend the largest box and score differences
to PyTorch (detections matched by score, within the score tolerance, and position), the fraction
of equal labels, the median latency. bfloat16 paths (``--pytorch-bf16``, ``--ov-precision bf16``)
are judged on mAP only, within 0.005 (``--precision auto``'s bound). Exit status 1 when a path
exceeds a tolerance (each failure is named), 2 when a file cannot be used. ``--backends tensorrt``
runs the file on onnxruntime's TensorRT execution provider (a GPU and onnxruntime-gpu); that path
is not exercised by this project's tests.
"""

import argparse
import os
import sys
from pathlib import Path

import torch
from mmdet.registry import MODELS
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

import mmdet_deformdetr  # noqa: F401  (registers our modules, safe checkpoint loading)
from mmdet_deformdetr import console
from mmdet_deformdetr.analysis.data import eval_dataset
from mmdet_deformdetr.analysis.hardware import cpu_name
from mmdet_deformdetr.deploy import OnnxDetector
from mmdet_deformdetr.deploy.backends import BACKENDS, OV_PRECISIONS, describe
from mmdet_deformdetr.deploy.verify import Tolerances, format_reports, verify_deploy

DEFAULTS = Tolerances()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Check a deployed file against PyTorch')
    parser.add_argument('config', help='the config the file was exported from')
    parser.add_argument('checkpoint', help='the checkpoint the file was exported from')
    parser.add_argument('model', help='.onnx file written by tools/deployment/export_onnx.py')
    parser.add_argument(
        '--backends', nargs='+', default=['onnxruntime', 'openvino'], choices=BACKENDS
    )
    parser.add_argument(
        '--ov-precision', default='f32', choices=OV_PRECISIONS, help="OpenVINO's precision hint"
    )
    parser.add_argument(
        '--pytorch-bf16',
        action='store_true',
        help='also PyTorch under bf16 autocast (tools/test.py --precision bf16)',
    )
    parser.add_argument(
        '--data-root', help="COCO-format data root (default: the config's test set)"
    )
    parser.add_argument('--ann-file', help='annotation file, relative to --data-root or absolute')
    parser.add_argument('--img-prefix', help='image folder inside --data-root')
    parser.add_argument('--max-images', type=int, help='only the first N images of the split')
    parser.add_argument('--threads', type=int, default=None, help='threads, every path')
    parser.add_argument('--tol-map', type=float, default=DEFAULTS.bbox_map, help='|mAP diff|')
    parser.add_argument('--tol-box', type=float, default=DEFAULTS.box, help='box diff, pixels')
    parser.add_argument('--tol-score', type=float, default=DEFAULTS.score, help='score diff')
    parser.add_argument(
        '--tol-labels',
        type=float,
        default=DEFAULTS.label_agreement,
        help='smallest fraction of equal labels',
    )
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config settings, KEY=VALUE'
    )
    console.add_verbose_argument(parser)
    return parser.parse_args()


def build_split(cfg: Config, args: argparse.Namespace):
    """The test dataset (test pipeline; every image, or the first ``--max-images``) and its
    annotation file."""
    dataset = eval_dataset(
        cfg,
        args.data_root and args.data_root.rstrip('/') + '/',
        args.ann_file,
        args.img_prefix and args.img_prefix.rstrip('/') + '/',
        split='test',
        max_images=args.max_images,
    )
    if args.data_root or args.ann_file:
        ann_file = Path(dataset.ann_file)  # joined with data_root by the dataset
    else:
        ann_file = Path(cfg.test_evaluator.ann_file)
    return dataset, ann_file


def main() -> int:
    args = parse_args()
    console.start_tool(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    cfg.model.backbone.init_cfg = None  # the checkpoint holds the backbone too
    model = MODELS.build(cfg.model)
    load_checkpoint(model, args.checkpoint, map_location='cpu', logger='silent')
    dataset, ann_file = build_split(cfg, args)
    detectors = {}
    for backend in args.backends:
        try:
            detector = OnnxDetector(
                args.model, cfg, args.threads, backend=backend, ov_precision=args.ov_precision
            )
        except Exception as error:  # the runtimes raise their own types for unreadable files
            print(f'{args.model}: cannot be run by {backend}: {error}', file=sys.stderr)
            return 2
        detectors[describe(backend, args.ov_precision)] = detector
    tolerances = Tolerances(
        args.tol_map, box=args.tol_box, score=args.tol_score, label_agreement=args.tol_labels
    )
    reports = verify_deploy(
        model, detectors, dataset, ann_file, tolerances, pytorch_bf16=args.pytorch_bf16
    )
    print(
        f'{len(dataset)} images of {ann_file}; CPU: {cpu_name()}, {os.cpu_count()} logical '
        f'cores, {args.threads or "default"} threads; tolerances: |mAP diff| <= '
        f'{tolerances.bbox_map}, box <= {tolerances.box} px, score <= {tolerances.score}, '
        f'labels equal >= {tolerances.label_agreement}'
    )
    print(format_reports(reports))
    failed = [report.name for report in reports if report.failures]
    print('FAILED: ' + ', '.join(failed) if failed else 'all backends within tolerances')
    return 1 if failed else 0


if __name__ == '__main__':
    # errors the package explains (checkpoint, config, downloads): a message, no traceback
    with console.explained_errors('tools/deployment/verify_deploy.py'):
        sys.exit(main())
