"""Export a Deformable DETR (plain, refine or two-stage) to ONNX with its post-process.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT --out model.onnx
        [--example-size H W] [--cfg-options KEY=VALUE ...] [--no-check]

The graph: ``images (batch, 3, height, width)`` float32, normalised as the config's data
preprocessor does and unpadded (every image of a batch fills the input; one image never needs a
padding mask) -> ``boxes (batch, k, 4)`` ``(x1, y1, x2, y2)`` in input pixels, ``scores (batch,
k)``, ``labels (batch, k)``, ``k = test_cfg.max_per_img`` (100). Batch, height and width are
symbolic; the deformable attention is plain ONNX (``GridSample``, opset 18), so onnxruntime needs
no custom-op library. ``tools/deployment/onnx_infer.py`` runs the file on images.

By default the tool then runs one random input through the graph (onnxruntime, CPU) and through
the PyTorch module it was exported from, and prints the largest differences.
"""
import argparse
import sys
import time

import torch
from mmdet.apis import init_detector
from mmengine.config import DictAction

import mmdet_deformdetr  # noqa: F401  (registers our modules, safe checkpoint loading)
from mmdet_deformdetr.deploy import OnnxDetector, export_onnx
from mmdet_deformdetr.deploy.exportable import ExportableDeformDETR


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a DeformDETR to ONNX')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (any format the configs load)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--example-size', type=int, nargs=2, default=(320, 320),
                        metavar=('H', 'W'),
                        help='size of the traced example (sizes stay symbolic; two-stage needs '
                        'at least num_queries tokens)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, KEY=VALUE')
    parser.add_argument('--no-check', action='store_true',
                        help='skip the onnxruntime-vs-PyTorch check on a random input')
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
    print(f'check on a random {size[0]}x{size[1]} input: max |box diff| {box_diff:.2e} px, '
          f'max |score diff| {score_diff:.2e}, labels identical: {same_labels}')


def main() -> None:
    args = parse_args()
    detector = init_detector(args.config, args.checkpoint, device='cpu',
                             cfg_options=args.cfg_options)
    classes = list(detector.dataset_meta.get('classes', ()))
    start = time.perf_counter()
    report = export_onnx(detector, args.out, example_hw=tuple(args.example_size),
                         metadata=dict(classes=classes, config=str(args.config)))
    size_mb = report.path.stat().st_size / 2**20
    print(f'wrote {report.path} ({size_mb:.1f} MiB, {report.num_nodes} nodes, opset '
          f'{report.metadata["opset"]}) in {time.perf_counter() - start:.0f} s')
    print(f'input: images (batch, 3, height >= {report.min_height}, '
          f'width >= {report.min_width}), normalised, unpadded; outputs: boxes, scores, labels '
          f'(top {report.metadata["max_per_img"]})')
    if not args.no_check:
        check(detector, str(report.path), detector.cfg, tuple(args.example_size))


if __name__ == '__main__':
    sys.exit(main())
