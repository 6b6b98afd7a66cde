"""The synthetic shapes generator: deterministic per seed, the promised content, and readable by
mmdet's CocoDataset with the demo's pipeline."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mmdet_deformdetr.datasets import CLASSES, ShapesConfig, generate_shapes_dataset, render_image

SMALL = dict(num_train=6, num_val=3)


def _digests(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob('*'))
        if p.is_file()
    }


@pytest.mark.slow
def test_same_seed_identical_files_different_seed_different(tmp_path):
    a = generate_shapes_dataset(tmp_path / 'a', ShapesConfig(seed=0, **SMALL))
    b = generate_shapes_dataset(tmp_path / 'b', ShapesConfig(seed=0, **SMALL))
    c = generate_shapes_dataset(tmp_path / 'c', ShapesConfig(seed=1, **SMALL))
    da, db, dc = _digests(a), _digests(b), _digests(c)
    assert len(da) == 6 + 3 + 2 + 1  # images, two annotation files, dataset_meta.json
    assert da == db
    images = [k for k in da if k.endswith('.png')]
    assert all(da[k] != dc[k] for k in images)


def test_files_do_not_depend_on_the_worker_count(tmp_path):
    one = generate_shapes_dataset(tmp_path / 'one', ShapesConfig(seed=2, **SMALL), workers=1)
    two = generate_shapes_dataset(tmp_path / 'two', ShapesConfig(seed=2, **SMALL), workers=2)
    assert _digests(one) == _digests(two)


def test_cached_by_parameters(tmp_path):
    root = generate_shapes_dataset(tmp_path, ShapesConfig(seed=0, **SMALL))
    marker = root / 'train' / '000000.png'
    stamp = marker.stat().st_mtime_ns
    generate_shapes_dataset(tmp_path, ShapesConfig(seed=0, **SMALL))  # same parameters: no rewrite
    assert marker.stat().st_mtime_ns == stamp
    generate_shapes_dataset(tmp_path, ShapesConfig(seed=3, **SMALL))  # other seed: regenerated
    assert json.loads((root / 'dataset_meta.json').read_text())['seed'] == 3


def test_coco_files_classes_and_sizes(tmp_path):
    cfg = ShapesConfig(seed=0, num_train=40, num_val=2)
    root = generate_shapes_dataset(tmp_path, cfg)
    coco = json.loads((root / 'annotations' / 'instances_train.json').read_text())
    assert len(CLASSES) >= 5
    assert [c['name'] for c in coco['categories']] == list(CLASSES)
    assert len(coco['images']) == 40
    used = {a['category_id'] for a in coco['annotations']}
    assert used == set(range(1, len(CLASSES) + 1))
    longest = np.array([max(a['bbox'][2:]) for a in coco['annotations']])
    # the drawn size is the box's longer side, uniform in [8, 120] (+/- a pixel of rasterising)
    assert longest.min() >= cfg.min_size - 2 and longest.max() <= cfg.max_size + 2
    assert (longest < 16).any() and (longest > 80).any()  # both ends of the range occur
    for a in coco['annotations']:
        x, y, w, h = a['bbox']
        assert 0 <= x and 0 <= y and x + w <= cfg.img_size and y + h <= cfg.img_size
        assert 0 < a['area'] <= w * h


def test_overlaps_exist_and_stay_partial():
    cfg = ShapesConfig(seed=0)
    overlapping_pairs = 0
    for index in range(30):
        image, objects = render_image(cfg, 'train', index, return_masks=True)
        assert image.shape == (cfg.img_size, cfg.img_size, 3) and image.dtype == np.uint8
        for i, obj in enumerate(objects):
            # every shape keeps at least min_visible of its pixels (later shapes cover it partly)
            assert obj['mask'].sum() >= cfg.min_visible * obj['full_area'] - 1
            assert obj['area'] == obj['mask'].sum()
            for other in objects[i + 1 :]:
                x0 = max(obj['bbox'][0], other['bbox'][0])
                x1 = min(obj['bbox'][0] + obj['bbox'][2], other['bbox'][0] + other['bbox'][2])
                y0 = max(obj['bbox'][1], other['bbox'][1])
                y1 = min(obj['bbox'][1] + obj['bbox'][3], other['bbox'][1] + other['bbox'][3])
                overlapping_pairs += x1 > x0 and y1 > y0
    assert overlapping_pairs >= 5


def test_backgrounds_are_textured_and_colours_vary():
    cfg = ShapesConfig(seed=0)
    colours = set()
    for index in range(10):
        image, objects = render_image(cfg, 'val', index, return_masks=True)
        background = ~np.any([o['mask'] for o in objects], axis=0)
        assert image[background].std(axis=0).mean() > 3  # not a flat colour
        for obj in objects:
            colours.add(tuple(int(v) // 32 for v in np.median(image[obj['mask']], axis=0)))
    assert len(colours) >= 10


def test_loads_through_mmdet_coco_dataset_pipeline(tmp_path):
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    root = generate_shapes_dataset(tmp_path, ShapesConfig(seed=0, **SMALL))
    cfg = Config.fromfile(
        Path(__file__).resolve().parents[2]
        / 'configs'
        / 'demo'
        / 'deformable-detr-refine-twostage_r18_shapes.py'
    )
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        dataset = DATASETS.build(dict(loader.dataset, data_root=f'{root}/'))
        assert dataset.metainfo['classes'] == CLASSES
        sample = dataset[0]
        inputs, data_sample = sample['inputs'], sample['data_samples']
        # the generated 256 px images, resized by the pipeline to the config's scale (224 px)
        assert inputs.shape[0] == 3 and max(inputs.shape[1:]) == max(cfg.img_scale) == 224
        labels = data_sample.gt_instances.labels
        assert len(labels) >= 1 and labels.max() < len(CLASSES)
        assert data_sample.gt_instances.bboxes.shape == (len(labels), 4)
