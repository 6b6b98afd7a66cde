"""Export a Deformable DETR (plain, refine or two-stage) to ONNX with its post-process.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT --out model.onnx
        [--example-size H W] [--dynamic-batch] [--cfg-options KEY=VALUE ...] [--no-check]

The graph: ``images (1, 3, height, width)`` float32, normalised as the config's data preprocessor
does and unpadded (one image never needs a padding mask; with ``--dynamic-batch`` the batch axis
is symbolic too and every image of a batch must fill the input) -> ``boxes (batch, k, 4)``
``(x1, y1, x2, y2)`` in input pixels, ``scores (batch, k)``, ``labels (batch, k)``, ``k =
test_cfg.max_per_img`` (100). Height and width are symbolic; the deformable attention is plain
ONNX (``GridSample``, opset 18), so onnxruntime needs no custom-op library.
``tools/deployment/onnx_infer.py`` runs the file on images.

By default the tool then runs one random input through the graph (onnxruntime, CPU) and through
the PyTorch module it was exported from, and prints the largest differences.
"""

import argparse
import time
from typing import Tuple

import torch
from mmdet.evaluation import get_classes
from mmdet.registry import MODELS
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

import mmdet_deformdetr  # noqa: F401  (registers our modules, safe checkpoint loading)
from mmdet_deformdetr import console
from mmdet_deformdetr.deploy import OnnxDetector, export_onnx
from mmdet_deformdetr.deploy.exportable import ExportableDeformDETR


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a DeformDETR to ONNX')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (any format the configs load)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument(
        '--example-size',
        type=int,
        nargs=2,
        default=(320, 320),
        metavar=('H', 'W'),
        help='size of the traced example (sizes stay symbolic; two-stage needs '
        'at least num_queries tokens)',
    )
    parser.add_argument(
        '--dynamic-batch',
        action='store_true',
        help='a symbolic batch axis too (default: one image; the export then '
        'takes about twice as long)',
    )
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config settings, KEY=VALUE'
    )
    parser.add_argument(
        '--no-check',
        action='store_true',
        help='skip the onnxruntime-vs-PyTorch check on a random input',
    )
    console.add_verbose_argument(parser)
    return parser.parse_args()


def check(detector: torch.nn.Module, onnx_path: str, config, size) -> None:
    """Print the largest differences between onnxruntime and the exported PyTorch module."""
    module = ExportableDeformDETR(detector)
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(images)
    got = OnnxDetector(onnx_path, config).run(images)
    box_diff = float((torch.from_numpy(got[0]) - expected[0]).abs().max())
    score_diff = float((torch.from_numpy(got[1]) - expected[1]).abs().max())
    same_labels = bool((torch.from_numpy(got[2]) == expected[2]).all())
    print(
        f'check on a random {size[0]}x{size[1]} input: max |box diff| {box_diff:.2e} px, '
        f'max |score diff| {score_diff:.2e}, labels identical: {same_labels}'
    )


def load_detector(
    config: str, checkpoint: str, cfg_options
) -> Tuple[torch.nn.Module, Config, dict]:
    """The model of ``config`` with ``checkpoint`` loaded, the config, and the checkpoint's
    dataset_meta (COCO's class names when it has none), as mmdet's DetInferencer reads them."""
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    cfg.model.backbone.init_cfg = None  # the checkpoint holds the backbone too
    detector = MODELS.build(cfg.model)
    loaded = load_checkpoint(detector, checkpoint, map_location='cpu')
    meta = dict(loaded.get('meta', {}).get('dataset_meta') or {})
    if not meta.get('classes'):
        print(f"{checkpoint} names no classes (meta.dataset_meta); using COCO's 80")
        meta['classes'] = get_classes('coco')
    return detector.eval(), cfg, meta


def main() -> None:
    args = parse_args()
    console.start_tool(args.verbose)
    detector, cfg, meta = load_detector(args.config, args.checkpoint, args.cfg_options)
    # the palette as a list of (r, g, b), or a name such as 'coco'
    palette = meta.get('palette')
    palette = (
        [list(colour) for colour in palette] if isinstance(palette, (list, tuple)) else palette
    )
    start = time.perf_counter()
    report = export_onnx(
        detector,
        args.out,
        example_hw=tuple(args.example_size),
        dynamic_batch=args.dynamic_batch,
        metadata=dict(
            classes=list(meta.get('classes', ())), palette=palette, config=str(args.config)
        ),
    )
    size_mb = report.path.stat().st_size / 2**20
    print(
        f'wrote {report.path} ({size_mb:.1f} MiB, {report.num_nodes} nodes, opset '
        f'{report.metadata["opset"]}) in {time.perf_counter() - start:.0f} s'
    )
    batch = 'batch' if args.dynamic_batch else 1
    print(
        f'input: images ({batch}, 3, height >= {report.min_height}, '
        f'width >= {report.min_width}), normalised, unpadded; outputs: boxes, scores, labels '
        f'(top {report.metadata["max_per_img"]})'
    )
    if not args.no_check:
        check(detector, str(report.path), cfg, tuple(args.example_size))


if __name__ == '__main__':
    # errors the package explains (checkpoint, config, downloads): a message, no traceback
    with console.explained_errors('tools/deployment/export_onnx.py'):
        main()
