"""Detect objects with an exported ONNX model (onnxruntime or OpenVINO, CPU); draw them as
tools/infer.py does.

    python tools/deployment/onnx_infer.py IMG_OR_DIR CONFIG MODEL.onnx [--out-dir outputs]
        [--pred-score-thr 0.3] [--palette none] [--threads N] [--save-pred]
        [--backend onnxruntime|openvino|tensorrt] [--ov-precision f32|bf16] [--ov-cache DIR]

Pre-processing is the config's test pipeline and data preprocessor (no padding: the graph assumes
unpadded images); drawing is mmdet's ``DetLocalVisualizer`` with the class names stored in the
model file, on the original image, into ``DIR/vis/<image name>`` (``DIR/preds/<name>.json`` with
``--save-pred``), the layout of ``tools/infer.py`` / mmdet's ``DetInferencer``.
"""

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import List

import mmcv
from mmdet.registry import VISUALIZERS
from mmdet.utils import register_all_modules
from mmengine.config import Config

import mmdet_deformdetr  # noqa: F401  (registers our modules)
from mmdet_deformdetr import console
from mmdet_deformdetr.deploy import OnnxDetector
from mmdet_deformdetr.deploy.backends import BACKENDS, OV_PRECISIONS

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Detect and draw with an exported ONNX model')
    parser.add_argument('inputs', help='an image file or a folder of images')
    parser.add_argument('config', help='the config the model was exported from')
    parser.add_argument('model', help='.onnx file written by tools/deployment/export_onnx.py')
    parser.add_argument('--out-dir', default='outputs', help='where vis/ (and preds/) go')
    parser.add_argument(
        '--pred-score-thr',
        type=float,
        default=0.3,
        help='draw only detections scoring at least this',
    )
    parser.add_argument(
        '--palette',
        default='none',
        help="box colours: 'coco', 'voc', 'citys', 'random', or 'none' (the "
        "config's, then the model file's, then random: as tools/infer.py)",
    )
    parser.add_argument(
        '--threads',
        type=int,
        default=None,
        help='intra-op (onnxruntime) / inference (OpenVINO) threads (default: one per core)',
    )
    parser.add_argument(
        '--backend',
        default='onnxruntime',
        choices=BACKENDS,
        help='runtime (tensorrt: onnxruntime-gpu with TensorRT, a GPU; untested here)',
    )
    parser.add_argument(
        '--ov-precision',
        default='f32',
        choices=OV_PRECISIONS,
        help="OpenVINO's inference precision (bf16: faster on CPUs with native bf16, scores "
        'move; see docs/deployment.md)',
    )
    parser.add_argument('--ov-cache', help="OpenVINO's compiled-model cache folder")
    parser.add_argument('--save-pred', action='store_true', help='also write predictions as JSON')
    console.add_verbose_argument(parser)
    return parser.parse_args()


def list_images(inputs: str) -> List[Path]:
    path = Path(inputs)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SystemExit(f'{path} holds no image ({", ".join(IMAGE_SUFFIXES)})')
        return images
    if not path.is_file():
        raise SystemExit(f'{path} is neither an image file nor a folder')
    return [path]


def build_visualizer(cfg: Config, detector: OnnxDetector, palette: str):
    """The config's visualizer with the model's classes, palette chosen as DetInferencer does."""
    visualizer_cfg = dict(cfg.get('visualizer', dict(type='DetLocalVisualizer')))
    visualizer_cfg['name'] = f'onnx_infer_{datetime.now().timestamp()}'
    visualizer = VISUALIZERS.build(visualizer_cfg)
    metainfo = cfg.get('test_dataloader', {}).get('dataset', {}).get('metainfo') or {}
    if palette == 'none':
        palette = metainfo.get('palette') or detector.metadata.get('palette') or 'random'
    if isinstance(palette, list):  # JSON gives [r, g, b] lists; the visualizer wants tuples
        palette = [tuple(colour) for colour in palette]
    visualizer.dataset_meta = dict(classes=detector.classes, palette=palette)
    return visualizer


def main() -> None:
    args = parse_args()
    console.start_tool(args.verbose)
    register_all_modules()
    cfg = Config.fromfile(args.config)
    detector = OnnxDetector(
        args.model,
        cfg,
        num_threads=args.threads,
        backend=args.backend,
        ov_precision=args.ov_precision,
        cache_dir=args.ov_cache,
    )
    visualizer = build_visualizer(cfg, detector, args.palette)
    out_dir = Path(args.out_dir)
    for image_path in list_images(args.inputs):
        sample = detector.predict(str(image_path))
        image = mmcv.imread(str(image_path), channel_order='rgb')
        visualizer.add_datasample(
            image_path.name,
            image,
            sample,
            draw_gt=False,
            pred_score_thr=args.pred_score_thr,
            out_file=str(out_dir / 'vis' / image_path.name),
        )
        if args.save_pred:
            pred = sample.pred_instances
            (out_dir / 'preds').mkdir(parents=True, exist_ok=True)
            (out_dir / 'preds' / f'{image_path.stem}.json').write_text(
                json.dumps(
                    dict(
                        labels=pred.labels.tolist(),
                        scores=pred.scores.tolist(),
                        bboxes=pred.bboxes.tolist(),
                    )
                )
            )
    print(f'results written to {out_dir}')


if __name__ == '__main__':
    # errors the package explains (checkpoint, config, downloads): a message, no traceback
    with console.explained_errors('tools/deployment/onnx_infer.py'):
        main()
