"""Bad data in real short trainings (mmengine's Runner in-process, and tools/train.py as a user
runs it): the run either finishes, having logged what it skipped, or stops before the first
iteration with a message naming the file or the setting."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from mmdet_deformdetr.datasets import BadDataError
from tests.helpers.broken_coco import make_coco
from tests.helpers.tools import REPO_ROOT, TINY_CONFIG

# short trainings: the whole suite's (the fast tier checks the datasets in test_bad_data.py)
pytestmark = pytest.mark.slow


def tiny_cfg(root: Path, work_dir: Path, **options) -> Config:
    """The tiny model of tests/helpers/tiny_deformdetr_coco.py on the dataset under ``root``."""
    cfg = Config.fromfile(str(TINY_CONFIG))
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = f'{root}/'
    cfg.val_evaluator.ann_file = cfg.test_evaluator.ann_file = f'{root}/annotations/instances.json'
    cfg.work_dir = str(work_dir)
    cfg.merge_from_dict(options)
    return cfg


def train(cfg: Config) -> str:
    """Train; return what the run logged (its log file)."""
    runner = Runner.from_cfg(cfg)
    runner.train()
    return Path(runner.log_dir, f'{runner.timestamp}.log').read_text()


def logged_losses(log: str) -> list:
    return [float(value) for value in re.findall(r' loss: (\S+)', log)]


def test_training_skips_undecodable_and_wrong_size_images_and_finishes(tmp_path, coco_photos):
    root = make_coco(
        tmp_path / 'data',
        coco_photos,
        image_defects=['corrupt', 'truncated', 'size_mismatch', 'grayscale', 'no_boxes'],
    )
    # 7 images, batches of 2: the 4 iterations visit every image once (DefaultSampler)
    log = train(
        tiny_cfg(
            root,
            tmp_path / 'work',
            train_cfg=dict(max_iters=4),
            train_dataloader=dict(batch_size=2),
        )
    )
    assert 'Iter(train) [4/4]' in log
    for name, what in [
        ('corrupt.jpg', 'image cannot be decoded'),
        ('truncated.jpg', 'image cannot be decoded'),
        ('wrong_size.jpg', 'image size differs from the annotation file'),
    ]:
        assert f'CheckedCocoDataset: skipped {root}/images/{name}: {what}' in log
    assert '3 image(s) skipped so far in this process' in log
    losses = logged_losses(log)
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)


def test_training_on_images_without_boxes_only(tmp_path, coco_photos):
    """A batch without any box (background images are kept, as in the official code) gives
    finite losses: the classification loss of "no object" for every query."""
    root = make_coco(tmp_path / 'data', coco_photos, image_defects=['no_boxes'])
    log = train(
        tiny_cfg(root, tmp_path / 'work', train_dataloader=dict(dataset=dict(indices=[2])))
    )  # image 3: background.jpg
    assert '1 images have no box of the listed classes: 1 kept as background' in log
    losses = logged_losses(log)
    assert len(losses) == 2 and all(math.isfinite(loss) and loss > 0 for loss in losses)


def test_missing_image_stops_the_run_before_training(tmp_path, coco_photos):
    root = make_coco(tmp_path / 'data', coco_photos, image_defects=['missing'])
    with pytest.raises(
        BadDataError,
        match=rf'(?s)image file does not exist.*{root}/images/'
        r"missing.jpg.*missing_images='skip'",
    ):
        Runner.from_cfg(tiny_cfg(root, tmp_path / 'work')).train()


@pytest.mark.parametrize(
    'num_classes,classes,loader',
    [
        (3, None, 'train_dataloader'),  # 80 COCO classes in the data, a 3-class head
        (80, ('person', 'bicycle', 'car'), 'train_dataloader'),
    ],
)
def test_num_classes_disagreeing_with_the_data_stops_before_training(
    tmp_path, coco_photos, num_classes, classes, loader
):
    root = make_coco(tmp_path / 'data', coco_photos)
    options = dict(model=dict(bbox_head=dict(num_classes=num_classes)))
    if classes:
        options['train_dataloader'] = dict(dataset=dict(metainfo=dict(classes=classes)))
    runner = Runner.from_cfg(tiny_cfg(root, tmp_path / 'work', **options))
    size = len(classes) if classes else 80
    with pytest.raises(
        BadDataError,
        match=rf'model.bbox_head.num_classes = {num_classes}, but '
        rf'{loader}.dataset has {size} classes .* Set '
        rf'model.bbox_head.num_classes={size} in the config',
    ):
        runner.train()
    assert runner.iter == 0


def test_val_classes_forgotten_stops_before_training(tmp_path, coco_photos):
    """metainfo set for training only: the val set keeps COCO's 80 classes, and evaluation would
    fail hours later. Checked when training starts."""
    root = make_coco(tmp_path / 'data', coco_photos)
    classes = ('person', 'bicycle', 'car')
    runner = Runner.from_cfg(
        tiny_cfg(
            root,
            tmp_path / 'work',
            model=dict(bbox_head=dict(num_classes=3)),
            train_dataloader=dict(dataset=dict(metainfo=dict(classes=classes))),
        )
    )
    with pytest.raises(
        BadDataError,
        match=r'model.bbox_head.num_classes = 3, but '
        r'val_dataloader.dataset has 80 classes',
    ):
        runner.train()


def test_without_the_check_a_small_head_fails_inside_the_matcher(tmp_path, coco_photos):
    """Why the hook exists: the same run without it ends in an IndexError in the matcher."""
    root = make_coco(tmp_path / 'data', coco_photos)
    runner = Runner.from_cfg(
        tiny_cfg(
            root, tmp_path / 'work', custom_hooks=[], model=dict(bbox_head=dict(num_classes=3))
        )
    )
    with pytest.raises(IndexError) as error:
        runner.train()
    assert 'head_loss.py' in {Path(str(entry.path)).name for entry in error.traceback}


@pytest.mark.parametrize(
    'defect,options,expected',
    [
        (
            'zero_byte',
            [],
            'image file is empty (0 bytes); re-download or re-export it, or remove it '
            "from the annotation file: ['{root}/images/empty.jpg']",
        ),
        (
            None,
            ['model.bbox_head.num_classes=3'],
            'model.bbox_head.num_classes = 3, but train_dataloader.dataset has 80 classes',
        ),
    ],
)
def test_tools_train_reports_bad_data_as_the_user_sees_it(
    tmp_path, coco_photos, defect, options, expected
):
    root = make_coco(tmp_path / 'data', coco_photos, image_defects=[defect] if defect else [])
    data_options = [
        f'{split}_dataloader.dataset.data_root={root}/' for split in ('train', 'val', 'test')
    ]
    data_options += [
        f'{key}.ann_file={root}/annotations/instances.json'
        for key in ('val_evaluator', 'test_evaluator')
    ]
    result = subprocess.run(
        [
            'nice',
            '-n',
            '5',
            sys.executable,
            'tools/train.py',
            str(TINY_CONFIG),
            '--work-dir',
            str(tmp_path / 'work'),
            '--cfg-options',
            *data_options,
            *options,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, OMP_NUM_THREADS='1'),
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert 'BadDataError: ' in output and expected.format(root=root) in output, output[-3000:]
    assert 'Iter(train)' not in output
