"""What can be wrong with a COCO-format detection dataset, and how each problem is recognised.

Shared by :class:`~mmdet_deformdetr.datasets.CheckedCocoDataset` (which drops, skips or refuses
while training) and ``tools/misc/check_dataset.py`` (which lists every problem before training),
so that both use the same rules and the same words. The rules follow mmdet's ``CocoDataset``: it
drops a box whose width or height is below 1 px, whose ``area`` is not positive, that does not
overlap the image, or whose category is not in ``metainfo.classes``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

#: problem key -> (severity, what it is, what happens / what to do). Severity 'error': training
#: refuses to start (or the checker exits non-zero); 'dropped': left out of training, counted and
#: logged; 'note': expected in some datasets, reported and kept.
PROBLEMS: dict[str, tuple[str, str, str]] = {
    'missing_image': (
        'error',
        'image file does not exist',
        'check data_root / data_prefix.img, or remove the image from the annotation file',
    ),
    'empty_image': (
        'error',
        'image file is empty (0 bytes)',
        're-download or re-export it, or remove it from the annotation file',
    ),
    'undecodable_image': (
        'error',
        'image cannot be decoded (corrupt, truncated, or a format OpenCV does not read)',
        'replace the file, or remove it from the annotation file',
    ),
    'truncated_image': (
        'error',
        'image has no end marker (truncated file)',
        'replace the file, or remove it from the annotation file',
    ),
    'size_mismatch': (
        'error',
        "image size differs from the annotation file's width/height",
        'fix width/height in the annotation file (the boxes must be in the '
        "decoded image's pixels), or the image",
    ),
    'malformed_image_entry': (
        'error',
        'image entry lacks file_name, or a positive integer width or height',
        'fix the "images" list of the annotation file',
    ),
    'malformed_annotation': (
        'error',
        'annotation lacks bbox [x, y, w, h] (finite numbers), area or category_id',
        'fix the annotation file (COCO needs all three)',
    ),
    'unknown_image_id': (
        'error',
        'annotation refers to an image id the file does not list',
        'fix image_id, or add the image to "images"',
    ),
    'duplicate_id': (
        'error',
        'an image id or annotation id occurs twice',
        'give every image and annotation a unique id',
    ),
    'unknown_category': (
        'dropped',
        'category_id is not among the file\'s "categories"',
        'fix category_id, or add the category',
    ),
    'degenerate_box': (
        'dropped',
        'box width or height is below 1 pixel (zero or negative included)',
        'fix or delete the box',
    ),
    'zero_area': (
        'dropped',
        'annotation area is not positive',
        'set area (COCO: the mask area; w * h for boxes only)',
    ),
    'outside_image': ('dropped', 'box does not overlap the image', 'fix or delete the box'),
    'unlisted_class': (
        'note',
        'category is not in metainfo.classes',
        'left out on purpose; list the class to train on it',
    ),
    'partly_outside': (
        'note',
        'box extends past the image border',
        'training clips it to the image (Resize, RandomCrop)',
    ),
    'no_boxes': (
        'note',
        'image has no box of the listed classes',
        "kept as background with filter_cfg.filter_empty_gt=False (the paper's "
        'setting), dropped with True',
    ),
}


def describe(key: str) -> str:
    """``'<what it is>; <what to do>'`` for a problem key of :data:`PROBLEMS`."""
    _, what, fix = PROBLEMS[key]
    return f'{what}; {fix}'


class BadDataError(ValueError):
    """A dataset problem that stops training; the message names the file and the fix."""


def malformed_field(ann: dict) -> Optional[str]:
    """The first missing or invalid field of a COCO annotation (``'bbox'``, ``'area'``,
    ``'category_id'``), or None."""
    bbox = ann.get('bbox')
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
    ):
        return 'bbox'
    area = ann.get('area')
    if not isinstance(area, (int, float)) or not math.isfinite(area):
        return 'area'
    if not isinstance(ann.get('category_id'), int):
        return 'category_id'
    return None


def malformed_image_field(img: dict) -> Optional[str]:
    """The first missing or invalid field of a COCO image entry (``'file_name'``, ``'width'``,
    ``'height'``), or None."""
    if not isinstance(img.get('file_name'), str) or not img['file_name']:
        return 'file_name'
    for key in ('width', 'height'):
        if not isinstance(img.get(key), int) or img[key] <= 0:
            return key
    return None


def box_problem(ann: dict, width: float, height: float) -> Optional[str]:
    """Why mmdet's CocoDataset drops (or would clip) a well-formed box in a ``width x height``
    image: ``'degenerate_box'``, ``'outside_image'``, ``'zero_area'``, ``'partly_outside'`` or
    None. Checked in this order, so that a zero-width box counts as degenerate, not as outside."""
    x, y, w, h = ann['bbox']
    if w < 1 or h < 1:
        return 'degenerate_box'
    overlap_w = max(0, min(x + w, width) - max(x, 0))
    overlap_h = max(0, min(y + h, height) - max(y, 0))
    if overlap_w * overlap_h == 0:
        return 'outside_image'
    if ann['area'] <= 0:
        return 'zero_area'
    if x < 0 or y < 0 or x + w > width or y + h > height:
        return 'partly_outside'
    return None


def decode_problem(data: bytes) -> tuple[Optional[str], Optional[tuple[int, int]]]:
    """Decode ``data`` as the training pipeline does (``mmcv.imfrombytes``, OpenCV, colour).

    Returns:
        ``(problem, (height, width))``: problem is ``'empty_image'``, ``'undecodable_image'`` or
        None; the size is None when it did not decode.
    """
    import mmcv

    if len(data) == 0:
        return 'empty_image', None
    try:
        image = mmcv.imfrombytes(data, flag='color', backend='cv2')
    except Exception:  # noqa: BLE001 - whatever OpenCV raises, the bytes are not an image
        image = None
    if image is None:
        return 'undecodable_image', None
    return None, tuple(image.shape[:2])


@dataclass
class HeaderInfo:
    """What an image file's header says (no pixel decoding)."""

    height: int
    width: int
    image_format: str
    #: EXIF orientation 5-8 (a 90-degree rotation): OpenCV, hence the pipeline, applies it, so
    #: the decoded image is ``width x height``
    rotated: bool


def read_header(path: str) -> HeaderInfo:
    """Size and format from the header (Pillow reads only the first kilobytes).

    Raises:
        OSError: the header cannot be read (Pillow's ``UnidentifiedImageError`` included).
    """
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        image_format = image.format or ''
        rotated = False
        if image_format in ('JPEG', 'MPO', 'TIFF', 'WEBP', 'PNG'):
            rotated = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    return HeaderInfo(height, width, image_format, rotated)


_END_MARKERS = {'JPEG': b'\xff\xd9', 'MPO': b'\xff\xd9', 'PNG': b'IEND\xaeB`\x82'}


def is_truncated(path: str, image_format: str) -> bool:
    """True when a JPEG or PNG file lacks its end marker in its last kilobyte (trailing zero
    padding allowed). One seek and a 1 KiB read: what a header check can afford for truncation,
    which Pillow's header read does not notice."""
    marker = _END_MARKERS.get(image_format)
    if marker is None:
        return False
    with open(path, 'rb') as file:
        file.seek(0, os.SEEK_END)
        size = file.tell()
        file.seek(max(0, size - 1024))
        tail = file.read()
    return marker not in tail.rstrip(b'\x00')[-len(marker) - 256 :]


def decoded_shape_note(decoded: tuple[int, int], expected: tuple[int, int]) -> str:
    """Words for a size mismatch: ``'decoded 480x640, annotation file says 640x480 (...)'``."""
    note = (
        f'decoded {decoded[0]}x{decoded[1]} (HxW), the annotation file says '
        f'{expected[0]}x{expected[1]}'
    )
    if tuple(decoded) == tuple(expected[::-1]):
        note += (
            ': swapped, so either the annotation file exchanged width and height, or the '
            'image has an EXIF orientation tag, which OpenCV applies when decoding'
        )
    return note
