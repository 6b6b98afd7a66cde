"""tools/test.py-style evaluation: an mmengine Runner built from our config runs the test loop on
the photographs of tests/data/coco_photos and CocoMetric returns the COCO box metrics. Weights are
random (no checkpoint, no download), so AP is ~0: this checks the plumbing (dataset -> pipeline ->
model -> metric), not accuracy. For speed: a ResNet-18 backbone, 2 + 2 transformer layers, smaller
test images."""

from pathlib import Path
from typing import List

import pytest
from mmengine.config import Config

# the shorter side 800 of the config's test pipeline, scaled down for a 2-core CPU
SMALL_SCALE = (533, 320)
BBOX_METRICS = ['bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l']


def _point_at_photos(cfg: Config, coco_photos: Path, work_dir: Path, num_images: int) -> None:
    cfg.model.transformer.update(num_encoder_layers=2, num_decoder_layers=2)
    dataloader = cfg.test_dataloader
    dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    dataloader.dataset.update(
        data_root=f'{coco_photos}/',
        ann_file='annotations/instances.json',
        data_prefix=dict(img='images/'),
        indices=num_images,
    )
    cfg.test_evaluator.ann_file = str(coco_photos / 'annotations' / 'instances.json')
    cfg.work_dir = str(work_dir)
    cfg.load_from = None


def _set_resize_scales(transforms: List[dict], scales: List[tuple]) -> None:
    resizes = [t for t in transforms if t['type'] == 'Resize']
    assert len(resizes) == len(scales)
    for resize, scale in zip(resizes, scales):
        resize['scale'] = scale


def _check_metrics(metrics: dict) -> None:
    for name in BBOX_METRICS:
        value = metrics[f'coco/{name}']
        # -1 is COCO's "no ground truth of this size among the evaluated images"
        assert value == -1 or 0.0 <= value <= 1.0, (name, value)


@pytest.mark.slow
def test_runner_test_loop_with_coco_metric(load_config, shrink_backbone, coco_photos, tmp_path):
    from mmengine.runner import Runner

    cfg = shrink_backbone(load_config('deformable-detr_r50_16xb2-50e_coco.py'))
    # 4 of the 6 images keep this short on a small CPU; CocoMetric still evaluates
    # against every image of the annotation file (the other 2 count as missed detections)
    _point_at_photos(cfg, coco_photos, tmp_path, num_images=4)
    _set_resize_scales(cfg.test_dataloader.dataset.pipeline, [SMALL_SCALE])

    runner = Runner.from_cfg(cfg)
    metrics = runner.test()

    print(metrics)
    _check_metrics(metrics)
    assert metrics['coco/bbox_mAP'] < 0.05  # random weights


@pytest.mark.slow
def test_runner_test_loop_with_tta(load_config, shrink_backbone, coco_photos, tmp_path):
    """What `tools/test.py CONFIG CKPT --tta` does with the TTA config: wrap the model in
    DetTTAModel and run the TTA pipeline (3 scales x 2 flips per image)."""
    from mmengine.runner import Runner

    cfg = shrink_backbone(
        load_config('deformable-detr-refine-twostage_x101-64x4d-dconv-c3-c5_16xb2-50e-tta_coco.py')
    )
    _point_at_photos(cfg, coco_photos, tmp_path, num_images=2)  # 1 batch x 6 views
    cfg.model = dict(**cfg.tta_model, module=cfg.model)
    tta_transforms = cfg.tta_pipeline[1].transforms
    _set_resize_scales(tta_transforms[0], [(333, 200), (400, 240), SMALL_SCALE])
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline

    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    print(metrics)
    _check_metrics(metrics)
