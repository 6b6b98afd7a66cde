"""Bad data through the dataset and pipeline of our primitive config (CheckedCocoDataset, mmdet's
LoadImageFromFile): what the user sees for each defect (issue #11; README "What happens with bad
data")."""

import io
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from mmdet.registry import DATASETS
from mmengine.logging import MMLogger

from mmdet_deformdetr.datasets import BadDataError
from tests.helpers.broken_coco import BOX_DEFECTS, IMAGE_DEFECTS, dataset_cfg, make_coco
from tests.helpers.tiers import slow_except


@pytest.fixture
def mm_log():
    """What mmengine's current logger writes (INFO and above), as a string buffer."""
    logger = MMLogger.get_current_instance()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def build(root: Path, test_mode: bool = False, **overrides):
    return DATASETS.build(dataset_cfg(root, test_mode=test_mode, **overrides))


def index_of(dataset, file_name: str) -> int:
    names = [Path(dataset.get_data_info(i)['img_path']).name for i in range(len(dataset))]
    return names.index(file_name)


def test_box_defects_are_dropped_counted_and_logged(tmp_path, coco_photos, mm_log):
    root = make_coco(tmp_path, coco_photos, box_defects=list(BOX_DEFECTS))
    dataset = build(root)
    log = mm_log.getvalue()
    assert 'dropped 2 box(es): box width or height is below 1 pixel' in log
    assert '(annotation ids [1001, 1002])' in log
    assert (
        'dropped 1 box(es): category_id is not among the file\'s "categories" '
        '(annotation ids [1005])' in log
    )
    assert 'dropped 1 box(es): box does not overlap the image (annotation ids [1003])' in log
    assert 'dropped 1 box(es): annotation area is not positive (annotation ids [1006])' in log
    assert 'kept 1 box(es): box extends past the image border (annotation ids [1004])' in log
    assert 'tools/misc/check_dataset.py' in log
    first = dataset.get_data_info(index_of(dataset, '000000397133.jpg'))
    assert len(first['instances']) == 19 + 1  # the photo's own boxes + the partly outside one
    assert [600.0, 380.0, 700.0, 480.0] in [inst['bbox'] for inst in first['instances']]


@pytest.mark.parametrize('seed', slow_except(range(4), lambda seed: seed == 0))
def test_train_pipeline_clips_partly_outside_boxes(tmp_path, coco_photos, seed):
    """The paper's augmentation (flip, multi-scale resize or resize-crop-resize) clips boxes to
    the image, so the partly outside box reaches the model inside it."""
    import torch

    root = make_coco(tmp_path, coco_photos, box_defects=['partly_outside'])
    dataset = build(root)
    torch.manual_seed(seed)
    np.random.seed(seed)
    sample = dataset.prepare_data(index_of(dataset, '000000397133.jpg'))
    height, width = sample['data_samples'].img_shape
    boxes = sample['data_samples'].gt_instances.bboxes.tensor
    assert len(boxes) > 0
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= width).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= height).all()


def test_unlisted_classes_are_left_out_with_a_note(tmp_path, coco_photos, mm_log):
    root = make_coco(tmp_path, coco_photos)
    dataset = build(root, metainfo=dict(classes=('person', 'car')))
    assert {
        inst['bbox_label']
        for i in range(len(dataset))
        for inst in dataset.get_data_info(i)['instances']
    } == {0}  # persons only
    log = mm_log.getvalue()
    # 26 boxes in the two photos, 5 of them persons
    assert "left out 21 boxes of categories not in metainfo.classes: {'bowl': 4, 'cup': 3" in log


@pytest.mark.parametrize(
    'classes,match',
    [
        (
            ('person', 'bicycle', 'unicorn'),
            r"metainfo.classes names \['unicorn'\], which .*"
            r'instances.json does not have',
        ),
        (
            ('car', 'person'),
            r'not in the order of the categories .* List the classes in that '
            r"order: \('person', 'car'\)",
        ),
    ],
)
def test_classes_that_do_not_fit_the_file_are_refused(tmp_path, coco_photos, classes, match):
    root = make_coco(tmp_path, coco_photos)
    with pytest.raises(BadDataError, match=match):
        build(root, metainfo=dict(classes=classes))


@pytest.mark.parametrize(
    'field,match',
    [
        (
            'bbox',
            r"instances.json: annotation id 1001 \(image 000000397133.jpg\) has no valid 'bbox'",
        ),
        (
            'area',
            r"instances.json: annotation id 1001 \(image 000000397133.jpg\) has no valid 'area'",
        ),
        # pycocotools indexes category_id while reading the file, before any image is parsed
        ('category_id', r"instances.json: an image or annotation entry has no 'category_id'"),
    ],
)
def test_malformed_annotation_names_file_and_id(tmp_path, coco_photos, field, match):
    import json

    root = make_coco(tmp_path, coco_photos, box_defects=['zero_width'])
    ann_file = root / 'annotations' / 'instances.json'
    coco = json.loads(ann_file.read_text())
    del next(a for a in coco['annotations'] if a['id'] == 1001)[field]
    ann_file.write_text(json.dumps(coco))
    with pytest.raises(BadDataError, match=match):
        build(root)


@pytest.mark.parametrize('defect', ['missing', 'zero_byte'])
@pytest.mark.parametrize('test_mode', [False, True], ids=['train', 'test'])
def test_missing_or_empty_image_stops_at_start_naming_it(tmp_path, coco_photos, defect, test_mode):
    root = make_coco(tmp_path, coco_photos, image_defects=[defect])
    path = root / 'images' / IMAGE_DEFECTS[defect][0]
    what = 'does not exist' if defect == 'missing' else 'is empty'
    with pytest.raises(
        BadDataError,
        match=rf'(?s)1 of 3 image files cannot be used:\n  1: image '
        rf"file {what}.*{path}.*missing_images='skip'",
    ):
        build(root, test_mode=test_mode)


def test_missing_images_skip_leaves_them_out_with_a_count(tmp_path, coco_photos, mm_log):
    root = make_coco(tmp_path, coco_photos, image_defects=['missing', 'zero_byte'])
    dataset = build(root, missing_images='skip')
    assert len(dataset) == 2
    log = mm_log.getvalue()
    assert '2 of 4 image files cannot be used' in log and "Left out (missing_images='skip')" in log
    assert str(root / 'images' / 'missing.jpg') in log and str(root / 'images/empty.jpg') in log


def test_wrong_image_folder_says_so(tmp_path, coco_photos):
    root = make_coco(tmp_path, coco_photos)
    with pytest.raises(
        BadDataError,
        match=r'none exists: data_root / data_prefix.img probably '
        r'point to the wrong folder \(images are looked up as .*/pictures/',
    ):
        build(root, data_prefix=dict(img='pictures/'))


@pytest.mark.parametrize(
    'defect,what',
    slow_except(
        [
            ('corrupt', 'image cannot be decoded'),
            ('truncated', 'image cannot be decoded'),
            (
                'size_mismatch',
                r"image size differs from the annotation file's width/height.*decoded "
                r'640x480 \(HxW\), the annotation file says 480x640: swapped',
            ),
        ],
        lambda case: case[0] == 'size_mismatch',
    ),
)
def test_undecodable_or_wrong_size_image_is_skipped_in_training(
    tmp_path, coco_photos, mm_log, defect, what
):
    root = make_coco(tmp_path, coco_photos, image_defects=[defect])
    dataset = build(root)
    index = index_of(dataset, IMAGE_DEFECTS[defect][0])
    assert dataset.prepare_data(index) is None  # mmengine then fetches another image
    path = root / 'images' / IMAGE_DEFECTS[defect][0]
    assert re.search(rf'CheckedCocoDataset: skipped {path}: {what}', mm_log.getvalue())
    assert '1 image(s) skipped so far in this process' in mm_log.getvalue()
    # __getitem__ (what the DataLoader calls) returns another, good image
    sample = dataset[index]
    assert Path(sample['data_samples'].img_path).name != path.name


@pytest.mark.parametrize(
    'defect',
    slow_except(['corrupt', 'truncated', 'size_mismatch'], lambda defect: defect == 'corrupt'),
)
def test_undecodable_or_wrong_size_image_raises_in_test_mode(tmp_path, coco_photos, defect):
    root = make_coco(tmp_path, coco_photos, image_defects=[defect])
    dataset = build(root, test_mode=True)
    path = root / 'images' / IMAGE_DEFECTS[defect][0]
    with pytest.raises(BadDataError, match=rf'{path}: .* In test mode every image counts'):
        dataset[index_of(dataset, path.name)]


def test_too_many_skipped_images_stop_training(tmp_path, coco_photos):
    root = make_coco(tmp_path, coco_photos, image_defects=['corrupt', 'truncated'])
    dataset = build(root, max_skipped_images=2)
    assert dataset.prepare_data(index_of(dataset, 'corrupt.jpg')) is None
    with pytest.raises(
        BadDataError,
        match=r'2 images skipped in this process \(limit: '
        r'max_skipped_images=2.*truncated.jpg.*looks broken',
    ):
        dataset.prepare_data(index_of(dataset, 'truncated.jpg'))


def test_other_pipeline_errors_are_reraised_naming_the_image(tmp_path, coco_photos):
    root = make_coco(tmp_path, coco_photos)
    dataset = build(root)

    def broken_transform(results):
        raise RuntimeError('a bug in a transform')

    dataset.pipeline = broken_transform
    with pytest.raises(RuntimeError, match='a bug in a transform') as error:
        dataset.prepare_data(0)
    assert f'(while loading {root}/images/000000397133.jpg' in ''.join(error.value.__notes__)


@pytest.mark.parametrize(
    'defect', slow_except(['grayscale', 'rgba', 'png16'], lambda defect: defect == 'png16')
)
def test_grayscale_rgba_and_16_bit_png_become_8_bit_bgr(tmp_path, coco_photos, defect):
    """mmcv's LoadImageFromFile (OpenCV, colour) as our config uses it: 3 channels, uint8; 16-bit
    values are scaled to 8 bits (v >> 8), grey is replicated, alpha dropped."""
    root = make_coco(tmp_path, coco_photos, image_defects=[defect])
    dataset = build(root)
    index = index_of(dataset, IMAGE_DEFECTS[defect][0])
    loaded = dataset.pipeline.transforms[0](dataset.get_data_info(index))  # LoadImageFromFile
    stored = cv2.imread(str(root / 'images' / IMAGE_DEFECTS[defect][0]), cv2.IMREAD_UNCHANGED)
    image = loaded['img']
    assert image.dtype == np.uint8 and image.shape == stored.shape[:2] + (3,)
    if defect == 'grayscale':
        expected = np.repeat(stored[..., None], 3, axis=-1)
    elif defect == 'rgba':
        expected = stored[..., :3]
    else:
        assert stored.dtype == np.uint16
        expected = (stored >> 8).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    sample = dataset.prepare_data(index)  # and the whole train pipeline runs
    assert sample['inputs'].shape[0] == 3 and len(sample['data_samples'].gt_instances) == 1


def test_image_without_boxes_is_kept_as_background(tmp_path, coco_photos, mm_log):
    root = make_coco(tmp_path, coco_photos, image_defects=['no_boxes'])
    dataset = build(root)
    assert len(dataset) == 3
    assert '1 images have no box of the listed classes: 1 kept as background' in mm_log.getvalue()
    sample = dataset.prepare_data(index_of(dataset, 'background.jpg'))
    assert len(sample['data_samples'].gt_instances) == 0
    dropped = build(root, filter_cfg=dict(filter_empty_gt=True))
    assert len(dropped) == 2


@pytest.mark.parametrize('value', ['sometimes', 'ERROR'])
def test_bad_setting_is_refused(tmp_path, coco_photos, value):
    root = make_coco(tmp_path, coco_photos)
    with pytest.raises(ValueError, match=r"missing_images must be 'error', 'skip' or 'off'"):
        build(root, missing_images=value)
