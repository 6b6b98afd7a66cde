"""Small COCO-format datasets with chosen defects, built from the photographs of
``tests/data/coco_photos`` (copied, re-encoded or broken with cv2/numpy) for the bad-data tests.

Layout under ``root``: ``images/*`` and ``annotations/instances.json``, with COCO's 80 categories.
Two good photographs (with their real boxes) are always there; :data:`IMAGE_DEFECTS` and
:data:`BOX_DEFECTS` add one image or one box each.
"""

import copy
import json
import shutil
from pathlib import Path
from typing import Dict, Iterable

import cv2
import numpy as np

GOOD_PHOTOS = ('000000397133.jpg', '000000252219.jpg')  # 640 x 427/428, 19 and 7 boxes

#: defect -> (file name written, source photo or None)
IMAGE_DEFECTS: Dict[str, tuple] = {
    'corrupt': ('corrupt.jpg', None),  # random bytes with a .jpg name
    'zero_byte': ('empty.jpg', None),  # a 0-byte file
    'truncated': ('truncated.jpg', '000000006818.jpg'),  # the first half of a JPEG
    'missing': ('missing.jpg', None),  # listed in the annotations, not on disk
    'grayscale': ('gray.png', '000000331352.jpg'),  # 8-bit, 1 channel
    'rgba': ('rgba.png', '000000331352.jpg'),  # 8-bit, 4 channels
    'png16': ('deep.png', '000000331352.jpg'),  # 16-bit, 3 channels
    'no_boxes': ('background.jpg', '000000122745.jpg'),  # an image without annotations
    'size_mismatch': ('wrong_size.jpg', '000000226111.jpg'),  # width/height swapped in the json
}
#: defect -> box [x, y, w, h] (on the first good photo, 640 x 427), category id, area
BOX_DEFECTS: Dict[str, tuple] = {
    'zero_width': ([100.0, 100.0, 0.0, 50.0], 1, 0.0),
    'negative_height': ([100.0, 100.0, 40.0, -5.0], 1, 200.0),
    'outside': ([700.0, 100.0, 40.0, 40.0], 1, 1600.0),
    'partly_outside': ([600.0, 380.0, 100.0, 100.0], 1, 1900.0),
    'unknown_category': ([10.0, 10.0, 50.0, 50.0], 999, 2500.0),
    'zero_area': ([20.0, 20.0, 30.0, 30.0], 1, 0.0),
}


def _write_defect(defect: str, path: Path, photos: Path) -> None:
    _, source = IMAGE_DEFECTS[defect]
    if defect == 'corrupt':
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    elif defect == 'zero_byte':
        path.write_bytes(b'')
    elif defect == 'truncated':
        data = (photos / 'images' / source).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif defect in ('no_boxes', 'size_mismatch'):
        shutil.copyfile(photos / 'images' / source, path)
    elif defect != 'missing':
        bgr = cv2.imread(str(photos / 'images' / source), cv2.IMREAD_COLOR)
        if defect == 'grayscale':
            image = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        elif defect == 'rgba':
            image = np.concatenate([bgr, np.full(bgr.shape[:2] + (1,), 128, np.uint8)], -1)
        else:  # png16: every 8-bit value v as v * 257 + (pixel index % 200), so the low byte varies
            noise = (np.arange(bgr.size).reshape(bgr.shape) % 200).astype(np.uint16)
            image = bgr.astype(np.uint16) * 257 + noise
            image = np.minimum(image, 65535).astype(np.uint16)
        assert cv2.imwrite(str(path), image)


def make_coco(
    root: Path, photos: Path, image_defects: Iterable[str] = (), box_defects: Iterable[str] = ()
) -> Path:
    """Write the dataset; returns ``root``. Image ids: the good photos 1, 2, then one per image
    defect in the given order; box defects are annotations on image 1 with ids 1001, 1002, ..."""
    source = json.loads((photos / 'annotations' / 'instances.json').read_text())
    by_name = {img['file_name']: img for img in source['images']}
    (root / 'images').mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for new_id, name in enumerate(GOOD_PHOTOS, start=1):
        shutil.copyfile(photos / 'images' / name, root / 'images' / name)
        images.append(dict(by_name[name], id=new_id))
        for ann in source['annotations']:
            if ann['image_id'] == by_name[name]['id']:
                annotations.append(
                    dict(copy.deepcopy(ann), image_id=new_id, id=len(annotations) + 1)
                )
    for defect in image_defects:
        file_name, source_photo = IMAGE_DEFECTS[defect]
        _write_defect(defect, root / 'images' / file_name, photos)
        info = by_name[source_photo] if source_photo else dict(height=427, width=640)
        height, width = info['height'], info['width']
        if defect == 'size_mismatch':
            height, width = width, height
        image_id = len(images) + 1
        images.append(dict(id=image_id, file_name=file_name, height=height, width=width))
        if defect != 'no_boxes':
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=image_id,
                    category_id=1,
                    bbox=[10.0, 20.0, 100.0, 150.0],
                    area=15000.0,
                    iscrowd=0,
                )
            )
    for number, defect in enumerate(box_defects, start=1001):
        bbox, category_id, area = BOX_DEFECTS[defect]
        annotations.append(
            dict(id=number, image_id=1, category_id=category_id, bbox=bbox, area=area, iscrowd=0)
        )
    coco = dict(images=images, annotations=annotations, categories=source['categories'])
    (root / 'annotations').mkdir(exist_ok=True)
    (root / 'annotations' / 'instances.json').write_text(json.dumps(coco))
    return root


def dataset_cfg(root: Path, test_mode: bool = False, **overrides) -> dict:
    """The train (or test) dataset of the primitive config pointed at ``root``."""
    from mmengine.config import Config

    from tests.helpers.models import PRIMITIVE_CONFIG

    cfg = Config.fromfile(str(PRIMITIVE_CONFIG))
    loader = cfg.val_dataloader if test_mode else cfg.train_dataloader
    dataset = copy.deepcopy(loader.dataset.to_dict())
    dataset.update(
        data_root=f'{root}/', ann_file='annotations/instances.json', data_prefix=dict(img='images/')
    )
    dataset.update(overrides)
    return dataset
