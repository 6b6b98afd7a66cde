"""What the demo leaves in its work dir besides the checkpoint: the COCO table, a grid of
predictions drawn by mmdet's DetLocalVisualizer, and a plot of loss and bbox mAP over training.

Everything here uses mmengine / mmdet / pycocotools / matplotlib as libraries; nothing is registered
(``MetricsKeeper`` is handed to ``Runner.register_hook`` as an instance).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.dataset import pseudo_collate
from mmengine.hooks import Hook


class MetricsKeeper(Hook):
    """Keeps the metrics of every validation run (iteration -> metrics), so the caller gets them
    without parsing logs: ``runner.train()`` returns the model, not the metrics."""

    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self.history: list[tuple[int, dict]] = []

    def after_val_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        self.history.append((runner.iter, dict(metrics or {})))

    @property
    def last(self) -> dict:
        return self.history[-1][1] if self.history else {}


def write_coco_table(
    metrics: dict,
    ann_file: str | Path,
    results_file: str | Path,
    out_txt: str | Path,
    out_json: str | Path,
) -> str:
    """Write COCO's 12-line bbox summary plus the per-class table (text) and the metrics (json).

    CocoMetric logs the summary but does not return it; it is recomputed here from the detections
    CocoMetric dumped (``outfile_prefix``), with pycocotools, which takes a second.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):  # pycocotools prints; keep it for the file instead
        gt = COCO(str(ann_file))
        dets = json.loads(Path(results_file).read_text())
        evaluator = COCOeval(gt, gt.loadRes(dets) if dets else COCO(), 'bbox')
        if dets:
            evaluator.evaluate()
            evaluator.accumulate()
    summary_buffer = io.StringIO()
    if dets:
        with contextlib.redirect_stdout(summary_buffer):
            evaluator.summarize()
    lines = [
        'COCO bbox evaluation',
        summary_buffer.getvalue().rstrip() or '(no detections)',
        '',
        f'{"category":<12} {"AP":>6} {"AP50":>6} {"AP75":>6} {"APs":>6} {"APm":>6} {"APl":>6}',
    ]
    names = sorted(
        {
            k[len('coco/') : -len('_precision')]
            for k in metrics
            if k.startswith('coco/') and k.endswith('_precision')
        }
    )
    # CocoMetric's classwise values: only mAP per class comes back in the metrics dict
    for name in names:
        lines.append(f'{name:<12} {metrics[f"coco/{name}_precision"]:>6.3f}')
    overall = [
        metrics.get(f'coco/bbox_{k}', float('nan'))
        for k in ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')
    ]
    lines.append(f'{"all":<12} ' + ' '.join(f'{v:>6.3f}' for v in overall))
    text = '\n'.join(lines) + '\n'
    Path(out_txt).write_text(text)
    Path(out_json).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return text


def _scaled(sample, factor: float):
    """A copy of a DetDataSample with its gt and predicted boxes multiplied by ``factor``."""
    sample = sample.clone()
    for field in ('gt_instances', 'pred_instances'):
        if field in sample and len(getattr(sample, field)) > 0:
            getattr(sample, field).bboxes = getattr(sample, field).bboxes * factor
    return sample


@torch.no_grad()
def draw_prediction_grid(
    model: torch.nn.Module,
    dataset,
    visualizer,
    out_png: str | Path,
    num_images: int = 6,
    columns: int = 2,
    score_thr: float = 0.3,
    upscale: float = 2.0,
) -> Path:
    """Predict on the first ``num_images`` of ``dataset`` and tile ``ground truth | prediction``
    pairs drawn by ``visualizer`` (mmdet's DetLocalVisualizer) into one PNG.

    Images are upscaled (``upscale``) before drawing: the demo's 256 px images would otherwise
    carry labels as large as the shapes.
    """
    import cv2
    import mmcv

    model.eval()
    tiles = []
    for index in range(min(num_images, len(dataset))):
        data = pseudo_collate([dataset[index]])
        sample = model.test_step(data)[0]
        image = mmcv.imread(sample.img_path, channel_order='rgb')
        if upscale != 1:
            image = cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_NEAREST)
            sample = _scaled(sample, upscale)
        visualizer.add_datasample(
            f'val_{index}',
            image,
            data_sample=sample,
            draw_gt=True,
            draw_pred=True,
            show=False,
            pred_score_thr=score_thr,
        )
        tiles.append(visualizer.get_image())
    if not tiles:
        raise ValueError('the dataset is empty: nothing to draw')
    height = max(t.shape[0] for t in tiles)
    width = max(t.shape[1] for t in tiles)
    rows = -(-len(tiles) // columns)
    grid = np.full((rows * height, columns * width, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * height : r * height + tile.shape[0], c * width : c * width + tile.shape[1]] = tile
    mmcv.imwrite(grid[..., ::-1], str(out_png))  # imwrite expects BGR
    return Path(out_png)


def _read_scalars(scalars_json: str | Path) -> list[dict]:
    rows = []
    for line in Path(scalars_json).read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def plot_training_curves(
    scalars_json: str | Path,
    out_png: str | Path,
    loss_keys: Sequence[str] = ('loss', 'loss_cls', 'loss_bbox', 'loss_iou'),
    map_keys: Sequence[str] = ('coco/bbox_mAP', 'coco/bbox_mAP_50'),
    final: Optional[tuple[int, Optional[float]]] = None,
) -> Path:
    """Plot the training losses and the validation bbox mAP against the iteration.

    ``scalars_json`` is the file mmengine's LocalVisBackend writes (one json object per logging
    step; training rows hold losses, validation rows hold ``coco/*``). ``final``: (iteration,
    bbox mAP) of the evaluation on the whole val split, drawn as a separate marker.
    """
    import matplotlib

    matplotlib.use('Agg')  # no display on a server; must precede pyplot
    import matplotlib.pyplot as plt

    rows = _read_scalars(scalars_json)
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 4))
    for key in loss_keys:
        points = [(r['step'], r[key]) for r in rows if key in r]
        if points:
            steps, values = zip(*points)
            ax_loss.plot(steps, values, label=key, linewidth=2 if key == 'loss' else 1)
    ax_loss.set(
        xlabel='iteration',
        ylabel='loss',
        title='training loss (last decoder layer parts; "loss" is the total)',
        yscale='log',
    )
    ax_loss.legend()
    for key in map_keys:
        points = [(r['step'], r[key]) for r in rows if key in r]
        if points:
            steps, values = zip(*points)
            ax_map.plot(steps, values, marker='o', label=key.split('/')[-1])
            ax_map.annotate(
                f'{values[-1]:.3f}',
                (steps[-1], values[-1]),
                textcoords='offset points',
                xytext=(-10, 6),
            )
    if final is not None and final[1] is not None:
        ax_map.plot(
            [final[0]],
            [final[1]],
            marker='*',
            markersize=14,
            linestyle='none',
            color='black',
            label='bbox_mAP, whole val split',
        )
        ax_map.annotate(f'{final[1]:.3f}', final, textcoords='offset points', xytext=(-10, -16))
    ax_map.set(xlabel='iteration', ylabel='COCO bbox AP', title='validation', ylim=(0, 1))
    ax_map.grid(alpha=0.3)
    ax_map.legend(loc='lower right')
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
