"""Check a COCO-format detection dataset before training: the engine of
``tools/misc/check_dataset.py``.

Every image file is looked at in parallel processes: ``stat`` (missing, empty), the header
(format, size, EXIF rotation; Pillow reads only the first kilobytes), the last kilobyte (JPEG/PNG
end marker: truncation), or with ``decode=True`` a full decode as the training pipeline does it.
The annotation file is checked with the rules of :mod:`.checks`, the ones
:class:`~mmdet_deformdetr.datasets.CheckedCocoDataset` applies while training.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .checks import (
    PROBLEMS,
    box_problem,
    decode_problem,
    decoded_shape_note,
    is_truncated,
    malformed_field,
    malformed_image_field,
    read_header,
)

# Problems of the file as a whole (not per image or box), in the words of the report.
FILE_PROBLEMS = {
    'unreadable_file': 'the annotation file is not COCO JSON (an object with "images", '
    '"annotations" and "categories")',
    'classes_not_in_file': 'metainfo.classes names categories the file lacks',
    'classes_order': "metainfo.classes is not in the file's category order (mmdet numbers "
    'labels in that order)',
}


@dataclass
class Report:
    """Findings per problem key (of :data:`.checks.PROBLEMS` or :data:`FILE_PROBLEMS`)."""

    num_images: int = 0
    num_annotations: int = 0
    findings: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    unlisted: Counter = field(default_factory=Counter)

    def add(self, problem: str, where: str) -> None:
        self.findings[problem].append(where)

    def severity(self, problem: str) -> str:
        return 'error' if problem in FILE_PROBLEMS else PROBLEMS[problem][0]

    def count(self, *severities: str) -> int:
        return sum(
            len(items) for key, items in self.findings.items() if self.severity(key) in severities
        )

    def summary(self, examples: int = 5) -> str:
        """The report as text: one block per problem, errors first, with examples."""
        lines = [f'{self.num_images} images, {self.num_annotations} annotations checked.']
        order = {'error': 0, 'dropped': 1, 'note': 2}
        for key in sorted(self.findings, key=lambda k: (order[self.severity(k)], k)):
            items = self.findings[key]
            if key in FILE_PROBLEMS:
                what, fix = FILE_PROBLEMS[key], ''
            else:
                _, what, fix = PROBLEMS[key]
            lines.append(
                f'[{self.severity(key)}] {key} x{len(items)}: {what}' + (f'; {fix}' if fix else '')
            )
            lines += [f'    {item}' for item in items[:examples]]
            if len(items) > examples:
                lines.append(f'    ... and {len(items) - examples} more')
        if self.unlisted:
            lines.append(
                f'[note] {sum(self.unlisted.values())} boxes of categories not in '
                f'metainfo.classes (left out on purpose): '
                f'{dict(self.unlisted.most_common(10))}'
            )
        errors, dropped = self.count('error'), self.count('dropped')
        lines.append(
            f'{errors} error(s) (training stops or skips the image), {dropped} box(es) '
            'training drops, ' + ('no problem found.' if not errors + dropped else 'see above.')
        )
        return '\n'.join(lines)


def check_image(task: tuple[str, int, int, bool]) -> Optional[tuple[str, str]]:
    """``(path, height, width, decode)`` -> ``(problem, detail)`` or None. Runs in a worker."""
    path, height, width, decode = task
    try:
        size = os.stat(path).st_size
    except OSError:
        return 'missing_image', ''
    if size == 0:
        return 'empty_image', ''
    if decode:
        with open(path, 'rb') as file:
            problem, shape = decode_problem(file.read())
        if problem is not None:
            return problem, ''
    else:
        try:
            header = read_header(path)
        except Exception as error:  # noqa: BLE001 - Pillow raises several types for non-images
            return 'undecodable_image', f'{type(error).__name__}: {error}'
        if is_truncated(path, header.image_format):
            return 'truncated_image', f'{header.image_format} without end marker'
        shape = (header.width, header.height) if header.rotated else (header.height, header.width)
    if tuple(shape) != (height, width):
        return 'size_mismatch', decoded_shape_note(tuple(shape), (height, width))
    return None


def _check_classes(report: Report, categories: list, classes: Optional[Sequence[str]]) -> None:
    if classes is None:
        return
    names = [c.get('name') for c in categories]
    unknown = [c for c in classes if c not in names]
    if unknown:
        report.add('classes_not_in_file', f'{unknown}; the file has {names}')
    in_file_order = tuple(n for n in names if n in classes)
    if not unknown and in_file_order != tuple(classes):
        report.add('classes_order', f"{tuple(classes)}; in the file's order: {in_file_order}")


def check_coco(
    ann_file: str,
    img_dir: str,
    classes: Optional[Sequence[str]] = None,
    decode: bool = False,
    nproc: int = 1,
    progress: bool = True,
) -> Report:
    """Check the annotation file and every image it lists.

    Args:
        ann_file: COCO-format JSON.
        img_dir: folder the images' ``file_name`` are relative to.
        classes: the classes to train on (``metainfo.classes``); None: every category.
        decode: decode every image fully (slower) instead of reading headers.
        nproc: processes for the image checks.
        progress: show mmengine's progress bar.
    """
    report = Report()
    try:
        with open(ann_file) as file:
            coco = json.load(file)
        images, annotations, categories = (coco[k] for k in ('images', 'annotations', 'categories'))
    except (OSError, ValueError, KeyError, TypeError) as error:
        report.add('unreadable_file', f'{ann_file}: {type(error).__name__}: {error}')
        return report
    report.num_images, report.num_annotations = len(images), len(annotations)
    _check_classes(report, categories, classes)
    category_names = {c.get('id'): c.get('name') for c in categories}
    listed = (
        set(category_names)
        if classes is None
        else {i for i, name in category_names.items() if name in classes}
    )

    by_id: dict = {}
    for img in images:
        field_name = malformed_image_field(img)
        if field_name is not None:
            report.add('malformed_image_entry', f'image id {img.get("id")}: {field_name!r}')
        elif img.get('id') in by_id:
            report.add('duplicate_id', f'image id {img["id"]}')
        else:
            by_id[img['id']] = img
    boxes = Counter()
    seen_annotations = set()
    for ann in annotations:
        where = f'annotation id {ann.get("id")}'
        if ann.get('id') in seen_annotations:
            report.add('duplicate_id', where)
        seen_annotations.add(ann.get('id'))
        img = by_id.get(ann.get('image_id'))
        if img is None:
            report.add('unknown_image_id', f'{where}: image_id {ann.get("image_id")}')
            continue
        where += f' (image {img["file_name"]})'
        if malformed_field(ann) is not None:
            report.add('malformed_annotation', f'{where}: {malformed_field(ann)!r}')
            continue
        if ann.get('ignore', False):
            continue
        if ann['category_id'] not in category_names:
            report.add('unknown_category', f'{where}: category_id {ann["category_id"]}')
            continue
        if ann['category_id'] not in listed:
            report.unlisted[category_names[ann['category_id']]] += 1
            continue
        problem = box_problem(ann, img['width'], img['height'])
        if problem is not None:
            report.add(problem, f'{where}: bbox {ann["bbox"]}, area {ann["area"]}')
        if problem in (None, 'partly_outside'):
            boxes[img['id']] += 1
    for img in by_id.values():
        if not boxes[img['id']]:
            report.add('no_boxes', img['file_name'])

    _check_files(report, list(by_id.values()), img_dir, decode, nproc, progress)
    return report


def _check_files(
    report: Report, images: list, img_dir: str, decode: bool, nproc: int, progress: bool
) -> None:
    from mmengine.utils import track_parallel_progress, track_progress

    tasks = [
        (os.path.join(img_dir, img['file_name']), img['height'], img['width'], decode)
        for img in images
    ]
    if not tasks:
        return
    if progress and nproc > 1:
        # chunks of tasks per message: a header read takes ~0.1 ms, less than a pool round trip
        results = track_parallel_progress(
            check_image, tasks, nproc, chunksize=max(1, min(64, len(tasks) // (8 * nproc)))
        )
    elif progress:
        results = track_progress(check_image, tasks)
    elif nproc > 1:
        from multiprocessing import Pool

        with Pool(nproc) as pool:
            results = pool.map(check_image, tasks, chunksize=64)
    else:
        results = [check_image(task) for task in tasks]
    for (path, *_), result in zip(tasks, results):
        if result is not None:
            problem, detail = result
            report.add(problem, path + (f' ({detail})' if detail else ''))
