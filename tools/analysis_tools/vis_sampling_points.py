"""Draw where Deformable DETR looks: the sampling points of the last decoder layer for the top
detections, and of an encoder layer for a chosen pixel (the paper's Figure 5 style).

    python tools/analysis_tools/vis_sampling_points.py IMAGE CONFIG CHECKPOINT
        [--out-dir vis_sampling] [--topk 3] [--pixel X Y] [--pixel-level 0]
        [--encoder-layer -1] [--panel-width 480] [--device cpu]

Writes to ``--out-dir``:

* ``decoder_points.png``: one row per detection (highest scores first), one panel per feature
  level: the box and class in mmdet's visualizer colours (the dataset palette), the reference
  point (white cross) and the M x K sampling points of that level, coloured by attention weight
  (colour bar at the bottom, shared by all panels of the row's detection);
* ``encoder_points.png`` (with ``--pixel``): the same for the encoder query at pixel ``(X, Y)``
  of the original image on level ``--pixel-level``, in layer ``--encoder-layer``;
* ``sampling_points.json``: every drawn point in original-image pixels, with its level, head,
  point index and weight, the reference points, boxes and query indices.

The locations are the model's own: ``mmdet_deformdetr.analysis.capture_sampling`` records what
each attention layer hands to the sampling operator during ``inference_detector``. Normalised
locations are mapped to pixels as the model maps its boxes: ``x * W_input / scale_factor``.
"""

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import mmcv
import numpy as np
import torch
from matplotlib import colormaps
from mmdet.apis import inference_detector, init_detector
from mmdet.registry import VISUALIZERS
from mmdet.visualization.palette import get_palette

import mmdet_deformdetr  # noqa: F401  (registers our modules, safe checkpoint loading)
from mmdet_deformdetr import console
from mmdet_deformdetr.analysis import capture_sampling

COLORMAP = colormaps['jet']


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Draw deformable attention sampling points')
    parser.add_argument('image', help='an image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-dir', default='vis_sampling', help='where the PNGs go')
    parser.add_argument('--topk', type=int, default=3, help='detections drawn (best first)')
    parser.add_argument(
        '--pixel',
        type=float,
        nargs=2,
        metavar=('X', 'Y'),
        help='also draw the encoder query at this original-image pixel',
    )
    parser.add_argument(
        '--pixel-level',
        type=int,
        default=0,
        help='feature level of that encoder query (0 = stride 8)',
    )
    parser.add_argument('--encoder-layer', type=int, default=-1, help='encoder layer drawn')
    parser.add_argument('--panel-width', type=int, default=480, help='width of one panel (px)')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda:N'")
    console.add_verbose_argument(parser)
    return parser.parse_args()


def to_pixels(normalised: np.ndarray, sample) -> np.ndarray:
    """``(..., 2)`` normalised ``(x, y)`` of the (padded) input -> original-image pixels."""
    pad_h, pad_w = sample.batch_input_shape
    scale_w, scale_h = sample.scale_factor
    return normalised * np.array([pad_w / scale_w, pad_h / scale_h])


def query_points(record, query: int, sample) -> Dict[str, object]:
    """One query's reference point and sampling points (original pixels) with weights."""
    locations = to_pixels(record.sampling_locations[0, query].double().numpy(), sample)
    weights = record.attention_weights[0, query].double().numpy()  # (M, L, K)
    reference = to_pixels(record.reference_points[0, query, 0, :2].double().numpy(), sample)
    num_heads, num_levels, num_points = weights.shape
    points = [
        dict(
            level=level,
            head=head,
            point=point,
            x=float(locations[head, level, point, 0]),
            y=float(locations[head, level, point, 1]),
            weight=float(weights[head, level, point]),
        )
        for head in range(num_heads)
        for level in range(num_levels)
        for point in range(num_points)
    ]
    return dict(
        query=query,
        reference=[float(v) for v in reference],
        points=points,
        level_shapes=[list(shape) for shape in record.level_shapes],
    )


def colour_bar(width: int, max_weight: float, visualizer) -> np.ndarray:
    """A horizontal bar of the colour map with its end values written on it."""
    ramp = COLORMAP(np.linspace(0, 1, width))[None, :, :3]
    bar = (np.repeat(ramp, 24, 0) * 255).astype(np.uint8)
    visualizer.set_image(bar)
    visualizer.draw_texts('attention weight 0', np.array([4, 4]), colors='white', font_sizes=10)
    visualizer.draw_texts(
        f'{max_weight:.3f}', np.array([width - 48, 4]), colors='white', font_sizes=10
    )
    return visualizer.get_image()


def draw_row(
    image: np.ndarray,
    entry: Dict[str, object],
    visualizer,
    scale: float,
    box: Optional[Sequence[float]] = None,
    box_colour: Tuple[int, int, int] = (0, 255, 0),
    caption: str = '',
) -> np.ndarray:
    """Panels (one per level) of one query, side by side, with a colour bar below."""
    points = entry['points']
    max_weight = max(point['weight'] for point in points)
    panels = []
    for level, (height, width) in enumerate(entry['level_shapes']):
        visualizer.set_image(image)
        if box is not None:
            visualizer.draw_bboxes(np.array(box) * scale, edge_colors=[box_colour], line_widths=2)
        chosen = [point for point in points if point['level'] == level]
        positions = np.array([[point['x'], point['y']] for point in chosen]) * scale
        colours = [
            tuple(int(255 * c) for c in COLORMAP(point['weight'] / max_weight)[:3])
            for point in chosen
        ]
        visualizer.draw_points(positions, colors=colours, sizes=np.full(len(chosen), 30))
        visualizer.draw_points(
            np.array(entry['reference']) * scale, colors='white', marker='x', sizes=np.array([90])
        )
        # points outside the image (they read zeros) would widen the axes: keep the image's
        visualizer.ax_save.set_xlim(0, image.shape[1])
        visualizer.ax_save.set_ylim(image.shape[0], 0)
        outside = sum(
            not (0 <= x < image.shape[1] and 0 <= y < image.shape[0]) for x, y in positions
        )
        visualizer.draw_texts(
            f'{caption} | level {level} ({height}x{width})'
            + (f', {outside} outside' if outside else ''),
            np.array([4, 4]),
            colors='white',
            font_sizes=11,
            bboxes=[dict(facecolor='black', alpha=0.6, pad=2)],
        )
        panels.append(visualizer.get_image())
    row = np.concatenate(panels, 1)
    return np.concatenate([row, colour_bar(row.shape[1], max_weight, visualizer)], 0)


def top_queries(cls_scores: torch.Tensor, topk: int) -> List[Tuple[int, int, float]]:
    """(query, label, score) of the head's top-k (query, class) pairs, as its post-process."""
    num_classes = cls_scores.shape[-1]
    scores, pairs = cls_scores.float().sigmoid().flatten().topk(topk)
    return [(int(p) // num_classes, int(p) % num_classes, float(s)) for p, s in zip(pairs, scores)]


def encoder_token(
    record_count: int,
    sample,
    pixel: Sequence[float],
    level: int,
    level_shapes: List[Tuple[int, int]],
) -> Tuple[int, int]:
    """(record index, query index) of the encoder query whose pixel holds ``pixel``."""
    pad_h, pad_w = sample.batch_input_shape
    scale_w, scale_h = sample.scale_factor
    x, y = pixel[0] * scale_w / pad_w, pixel[1] * scale_h / pad_h  # normalised
    height, width = level_shapes[level]
    row, col = min(int(y * height), height - 1), min(int(x * width), width - 1)
    if record_count > 1:  # the single-scale ablation: one call per level, its own tokens
        return level, row * width + col
    start = sum(h * w for h, w in level_shapes[:level])
    return 0, start + row * width + col


def main() -> None:
    args = parse_args()
    console.start_tool(args.verbose)
    model = init_detector(args.config, args.checkpoint, device=args.device)
    captured = {}
    hook = model.bbox_head.register_forward_hook(
        lambda module, inputs, output: captured.update(cls_scores=output[0][-1, 0].cpu())
    )
    with capture_sampling(model) as records:
        sample = inference_detector(model, args.image)
    hook.remove()
    classes = model.dataset_meta['classes']
    palette = get_palette(model.dataset_meta.get('palette', 'random'), len(classes))

    image = mmcv.imread(args.image, channel_order='rgb')
    scale = args.panel_width / image.shape[1]
    image = mmcv.imrescale(image, scale)
    visualizer = VISUALIZERS.build(dict(type='DetLocalVisualizer', name='vis_sampling_points'))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    num_layers = len(model.transformer.decoder.layers)
    decoder_record = records[f'transformer.decoder.layers.{num_layers - 1}.cross_attn'][0]
    result = dict(image=str(args.image), decoder=[], encoder=None)
    rows = []
    predictions = sample.pred_instances
    for rank, (query, label, score) in enumerate(top_queries(captured['cls_scores'], args.topk)):
        entry = query_points(decoder_record, query, sample)
        box = predictions.bboxes[rank].tolist()  # the same top-k order as the head's
        entry.update(label=label, score=score, box=box, class_name=classes[label])
        result['decoder'].append(entry)
        rows.append(
            draw_row(
                image,
                entry,
                visualizer,
                scale,
                box,
                palette[label],
                f'{classes[label]} {score:.2f}',
            )
        )
    mmcv.imwrite(np.concatenate(rows, 0)[..., ::-1], str(out_dir / 'decoder_points.png'))

    if args.pixel:
        layer = args.encoder_layer % len(model.transformer.encoder.layers)
        layer_records = records[f'transformer.encoder.layers.{layer}.self_attn']
        level_shapes = [shape for record in layer_records for shape in record.level_shapes]
        index, query = encoder_token(
            len(layer_records), sample, args.pixel, args.pixel_level, level_shapes
        )
        entry = query_points(layer_records[index], query, sample)
        entry.update(layer=layer, pixel=list(args.pixel), pixel_level=args.pixel_level)
        result['encoder'] = entry
        row = draw_row(
            image,
            entry,
            visualizer,
            scale,
            caption=f'encoder layer {layer}, pixel ({args.pixel[0]:.0f}, '
            f'{args.pixel[1]:.0f}) on level {args.pixel_level}',
        )
        mmcv.imwrite(row[..., ::-1], str(out_dir / 'encoder_points.png'))
    (out_dir / 'sampling_points.json').write_text(json.dumps(result, indent=1))
    print(f'results written to {out_dir}')


if __name__ == '__main__':
    # errors the package explains (checkpoint, config, downloads): a message, no traceback
    with console.explained_errors('tools/analysis_tools/vis_sampling_points.py'):
        main()
