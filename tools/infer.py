"""Detect objects in images with a config and a checkpoint, and draw the detections.

    python tools/infer.py IMG_OR_DIR CONFIG CHECKPOINT [--out-dir DIR] [--device cpu|cuda:0]
                          [--pred-score-thr 0.3] [--batch-size 1] [--save-pred] [--show]
                          [--precision fp32|bf16|auto]

A thin wrapper over mmdet's ``DetInferencer``: painted images go to ``DIR/vis/`` (mmdet's
visualizer) and, with ``--save-pred``, the predictions as JSON to ``DIR/preds/``. Class names come
from the checkpoint's ``dataset_meta`` (COCO's when it has none). Importing ``mmdet_deformdetr``
registers our modules and the safe loading of every checkpoint format we read.
"""

import argparse

import torch
from mmdet.apis import DetInferencer

from mmdet_deformdetr import console, find_config  # (the import registers our modules)
from mmdet_deformdetr.checkpoint import check_checkpoint_for_testing
from mmdet_deformdetr.engine.inference_precision import (
    add_precision_argument,
    inference_autocast,
    log_precision,
    resolve_precision,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Detect and draw with DetInferencer')
    parser.add_argument('inputs', help='an image file or a folder of images')
    parser.add_argument('config', help='config file, or the name of a shipped config')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-dir', default='outputs', help='where vis/ (and preds/) go')
    parser.add_argument(
        '--device', default=None, help='cpu, cuda:0, ... (default: cuda:0 when available, else cpu)'
    )
    parser.add_argument(
        '--pred-score-thr',
        type=float,
        default=0.3,
        help='draw only detections scoring at least this',
    )
    parser.add_argument('--batch-size', type=int, default=1, help='images per forward pass')
    parser.add_argument(
        '--palette',
        default='none',
        help="box colours: 'coco', 'voc', 'citys', 'random', or 'none' (the "
        "checkpoint's or config's)",
    )
    parser.add_argument('--save-pred', action='store_true', help='also write predictions as JSON')
    parser.add_argument('--show', action='store_true', help='show each image in a window')
    add_precision_argument(parser)
    console.add_verbose_argument(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    console.start_tool(args.verbose)
    # errors the package explains (config, checkpoint, downloads): a message, no traceback
    with console.explained_errors('tools/infer.py', checkpoint_argument=args.checkpoint):
        infer(args)


def infer(args: argparse.Namespace) -> None:
    """Build the inferencer, check the checkpoint, detect and draw."""
    device = args.device or ('cuda:0' if torch.cuda.is_available() else 'cpu')
    device_type = torch.device(device).type
    precision, reason = resolve_precision(args.precision, device_type)
    log_precision(precision, reason)
    with console.config_errors(args.config):  # a config that does not load or build
        inferencer = DetInferencer(
            model=str(find_config(args.config)),
            weights=args.checkpoint,
            device=device,
            palette=args.palette,
        )
    # heads of another class count would draw random detections: refuse, naming num_classes
    check_checkpoint_for_testing(inferencer.model, args.checkpoint)
    with inference_autocast(precision, device_type):
        inferencer(
            args.inputs,
            batch_size=args.batch_size,
            out_dir=args.out_dir,
            pred_score_thr=args.pred_score_thr,
            no_save_pred=not args.save_pred,
            show=args.show,
        )
    print(f'results written to {args.out_dir}')


if __name__ == '__main__':
    main()
