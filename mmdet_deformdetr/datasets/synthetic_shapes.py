"""A synthetic COCO-format detection dataset of coloured shapes, deterministic from a seed.

Used by the demo (``tools/run_demo.sh``) and by tests that need small real-looking data without
downloads. Every image is drawn from its own random stream ``default_rng([seed, split, index])``, so
an image does not depend on how many images came before it or on the order of generation.

Layout written under ``out_dir``::

    out_dir/
      train/000000.png ...          RGB images (PNG, lossless so the data is bit-exact per seed)
      val/000000.png ...
      annotations/instances_train.json, instances_val.json   COCO detection format
      dataset_meta.json             the generation parameters; a matching file means "cached"

Annotations hold the full (unoccluded) box of every shape in ``[x, y, w, h]`` pixels, ``area`` is
the visible pixel area (as COCO's ``area`` is the mask area), and a shape is only placed when it
leaves every earlier shape at least ``min_visible`` of its pixels visible, so overlaps stay partial.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

CLASSES: tuple[str, ...] = ('circle', 'square', 'triangle', 'star', 'hexagon')
_SPLIT_IDS = {'train': 0, 'val': 1}
_FORMAT_VERSION = 2  # bump when the drawing code changes, so cached datasets are regenerated


@dataclass
class ShapesConfig:
    """Parameters of the synthetic dataset. Equal parameters give bit-identical files."""

    seed: int = 0
    num_train: int = 1000
    num_val: int = 200
    img_size: int = 256
    min_size: int = 8  # shortest side of a shape's box, in pixels
    max_size: int = 120  # longest side of a shape's box, in pixels
    max_objects: int = 8
    min_visible: float = 0.6  # an earlier shape keeps at least this fraction of its pixels
    classes: tuple[str, ...] = field(default=CLASSES)
    format_version: int = _FORMAT_VERSION

    def __post_init__(self) -> None:
        unknown = set(self.classes) - set(CLASSES)
        if unknown:
            raise ValueError(f'unknown shape classes {sorted(unknown)}; known: {CLASSES}')
        if not 4 <= self.min_size <= self.max_size <= self.img_size:
            raise ValueError(
                'need 4 <= min_size <= max_size <= img_size, got '
                f'{self.min_size}, {self.max_size}, {self.img_size}'
            )
        if self.num_train < 0 or self.num_val < 0 or self.max_objects < 1:
            raise ValueError('num_train, num_val must be >= 0 and max_objects >= 1')
        self.classes = tuple(self.classes)


def _regular_polygon(
    num_vertices: int, radius: float, angle: float, inner_ratio: Optional[float] = None
) -> np.ndarray:
    """Vertices (N, 2) around the origin; with ``inner_ratio`` a star with alternating radii."""
    if inner_ratio is None:
        thetas = angle + 2 * math.pi * np.arange(num_vertices) / num_vertices
        radii = np.full(num_vertices, radius)
    else:
        thetas = angle + math.pi * np.arange(2 * num_vertices) / num_vertices
        radii = np.where(np.arange(2 * num_vertices) % 2 == 0, radius, radius * inner_ratio)
    return np.stack([radii * np.cos(thetas), radii * np.sin(thetas)], axis=1)


def _shape_outline(name: str, size: float, rng: np.random.Generator) -> Optional[np.ndarray]:
    """Polygon (N, 2) centred at the origin whose box's longer side is about ``size``.

    Returns None for a circle (drawn with ``cv2.circle``).
    """
    angle = rng.uniform(0, 2 * math.pi)
    if name == 'circle':
        return None
    if name == 'square':
        # A square rotated by `angle` has box side r * sqrt(2) * (|cos| + |sin|) at most 2r.
        points = _regular_polygon(4, 1.0, angle)
    elif name == 'triangle':
        points = _regular_polygon(3, 1.0, angle)
    elif name == 'star':
        points = _regular_polygon(5, 1.0, angle, inner_ratio=0.45)
    elif name == 'hexagon':
        points = _regular_polygon(6, 1.0, angle)
    else:  # guarded by ShapesConfig.__post_init__
        raise ValueError(name)
    extent = (points.max(0) - points.min(0)).max()
    return points * (size / extent)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A textured RGB background: colour gradient + low-frequency blobs + pixel noise (+ lines)."""
    base = rng.uniform(40, 215, size=3)
    direction = rng.uniform(-60, 60, size=3)
    ramp = np.linspace(-0.5, 0.5, size)
    if rng.random() < 0.5:
        ramp2d = ramp[None, :] + 0 * ramp[:, None]
    else:
        ramp2d = ramp[:, None] + 0 * ramp[None, :]
    image = base[None, None, :] + ramp2d[..., None] * direction[None, None, :]
    # Low-frequency texture: coarse noise upsampled, so backgrounds are not flat colours.
    cells = int(rng.integers(4, 12))
    coarse = rng.normal(0, rng.uniform(5, 25), size=(cells, cells, 3)).astype(np.float32)
    image += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, rng.uniform(2, 12), size=image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    # Clutter lines that are not objects (distractors).
    for _ in range(int(rng.integers(0, 4))):
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        p2 = tuple(int(v) for v in rng.integers(0, size, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.line(image, p1, p2, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    return image


def _shape_colour(background_mean: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated random colour that differs clearly from the local background."""
    for _ in range(20):
        hsv = np.array(
            [[[rng.integers(0, 180), rng.integers(120, 256), rng.integers(90, 256)]]],
            dtype=np.uint8,
        )
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)
        if np.abs(rgb - background_mean).sum() > 120:
            break
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _draw_mask(
    name: str, outline: Optional[np.ndarray], centre: np.ndarray, size: float, img_size: int
) -> np.ndarray:
    mask = np.zeros((img_size, img_size), np.uint8)
    if outline is None:
        cv2.circle(mask, (round(centre[0]), round(centre[1])), max(1, round(size / 2)), 1, -1)
    else:
        cv2.fillPoly(mask, [np.round(outline + centre).astype(np.int32)], 1)
    return mask.astype(bool)


def render_image(
    cfg: ShapesConfig, split: str, index: int, return_masks: bool = False
) -> tuple[np.ndarray, list[dict]]:
    """Draw one image.

    Args:
        return_masks: also return each object's ``mask`` (visible pixels, (H, W) bool) and
            ``full_area`` (its pixel count before later shapes covered it), for tests.

    Returns:
        image: (H, W, 3) uint8 RGB.
        objects: list of dicts with ``category_id`` (1-based), ``bbox`` [x, y, w, h] and ``area``.
    """
    rng = np.random.default_rng([cfg.seed, _SPLIT_IDS[split], index])
    size = cfg.img_size
    image = _background(size, rng)
    num_objects = int(rng.integers(1, cfg.max_objects + 1))
    placed: list[dict] = []  # each: mask (visible pixels so far), bbox, category_id
    for _ in range(num_objects * 4):  # a few attempts per object; crowded images just get fewer
        if len(placed) == num_objects:
            break
        label = int(rng.integers(len(cfg.classes)))
        name = cfg.classes[label]
        # Uniform in side length: about a fifth of the shapes are under 32 px. (Log-uniform sizes
        # made half of them tiny, where a star, a hexagon and a circle are a few identical pixels.)
        shape_size = rng.uniform(cfg.min_size, cfg.max_size)
        outline = _shape_outline(name, shape_size, rng)
        half = shape_size / 2
        centre = rng.uniform(half, size - half, size=2)
        mask = _draw_mask(name, outline, centre, shape_size, size)
        if mask.sum() < 12:
            continue
        # Keep overlaps partial: every earlier shape must stay mostly visible.
        if any((p['mask'] & ~mask).sum() < cfg.min_visible * p['full_area'] for p in placed):
            continue
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        if min(x1 - x0, y1 - y0) < min(cfg.min_size, 6):
            continue
        region = image[max(0, y0 - 4) : y1 + 4, max(0, x0 - 4) : x1 + 4]
        colour = _shape_colour(region.reshape(-1, 3).mean(0), rng)
        for p in placed:
            p['mask'] &= ~mask
        # Slight per-shape shading so shapes are not perfectly flat.
        shaded = np.clip(
            np.array(colour)[None, :] + rng.normal(0, 6, size=(int(mask.sum()), 3)), 0, 255
        ).astype(np.uint8)
        image[mask] = shaded
        placed.append(
            dict(
                mask=mask,
                full_area=int(mask.sum()),
                category_id=label + 1,
                bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            )
        )
    # Soft edges, as real photos have.
    image = cv2.GaussianBlur(image, (3, 3), 0.6)
    objects = [
        dict(category_id=p['category_id'], bbox=p['bbox'], area=float(p['mask'].sum()))
        for p in placed
    ]
    if return_masks:
        for obj, p in zip(objects, placed):
            obj.update(mask=p['mask'], full_area=p['full_area'])
    return image, objects


def _write_image(job: tuple[ShapesConfig, str, str, int]) -> list[dict]:
    """Render image ``index`` of ``split``, write it as PNG into ``image_dir``; its objects."""
    cfg, split, image_dir, index = job
    image, objects = render_image(cfg, split, index)
    # cv2 writes BGR; the arrays are RGB.
    cv2.imwrite(os.path.join(image_dir, f'{index:06d}.png'), image[..., ::-1])
    return objects


def _write_split(
    cfg: ShapesConfig, out_dir: Path, split: str, num_images: int, pool: Optional[Pool] = None
) -> Path:
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, split, str(image_dir), index) for index in range(num_images)]
    # every image has its own random stream, so the files do not depend on the worker count
    per_image = pool.map(_write_image, jobs, chunksize=16) if pool else map(_write_image, jobs)
    images, annotations = [], []
    for index, objects in enumerate(per_image):
        images.append(
            dict(
                id=index + 1, file_name=f'{index:06d}.png', height=cfg.img_size, width=cfg.img_size
            )
        )
        for obj in objects:
            annotations.append(dict(id=len(annotations) + 1, image_id=index + 1, iscrowd=0, **obj))
    coco = dict(
        info=dict(description=f'synthetic shapes, seed {cfg.seed}, split {split}'),
        images=images,
        annotations=annotations,
        categories=[
            dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(cfg.classes)
        ],
    )
    ann_file = out_dir / 'annotations' / f'instances_{split}.json'
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(coco))
    return ann_file


def generate_shapes_dataset(
    out_dir: str | Path,
    cfg: Optional[ShapesConfig] = None,
    overwrite: bool = False,
    workers: Optional[int] = None,
) -> Path:
    """Write the dataset under ``out_dir`` (skipped when a dataset with equal parameters is there).

    Args:
        out_dir: target folder; created if needed.
        cfg: generation parameters (default ``ShapesConfig()``).
        overwrite: regenerate even when the cached parameters match.
        workers: processes drawing images (default: one per CPU; 1 draws in this process).
            The files are the same for any count.

    Returns:
        ``out_dir`` as a Path.
    """
    cfg = cfg or ShapesConfig()
    out_dir = Path(out_dir)
    meta_file = out_dir / 'dataset_meta.json'
    wanted = asdict(cfg)
    wanted['classes'] = list(cfg.classes)
    if not overwrite and meta_file.is_file():
        try:
            if json.loads(meta_file.read_text()) == wanted:
                return out_dir
        except json.JSONDecodeError:
            pass  # a broken marker means a broken dataset: regenerate
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_file.unlink(missing_ok=True)  # written last, so an interrupted run is never "cached"
    workers = workers or os.cpu_count() or 1
    pool = Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) if workers > 1 else None
    try:
        _write_split(cfg, out_dir, 'train', cfg.num_train, pool)
        _write_split(cfg, out_dir, 'val', cfg.num_val, pool)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    meta_file.write_text(json.dumps(wanted, indent=2))
    return out_dir
