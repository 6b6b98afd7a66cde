"""``CheckedCocoDataset``: mmdet's ``CocoDataset`` that says what is wrong with the data.

mmdet's dataset, as is, crashes at the first batch holding a missing, empty or corrupt image (the
empty one without naming the file), and drops invalid boxes and unknown categories without a
word. This subclass keeps mmdet's parsing, filtering and pipeline and adds, once when it is built:

* checks of the annotation file that stop the run with a message naming the file, the entry and
  the fix: malformed entries (mmdet would raise a bare ``KeyError``), ``metainfo.classes`` naming
  a category the file lacks, or listed in another order than the file's (mmdet numbers labels in
  the file's order, so names would be attached to the wrong labels);
* a count of the boxes mmdet drops or clips, and why, logged with example annotation ids;
* a ``stat`` of every local image file (about 7 us each: ~1 s for COCO train): missing or empty
  files stop the run with their names (``missing_images='error'``) or are left out, counted
  (``'skip'``);

and, while loading:

* an image that cannot be decoded, or decodes to another size than the annotation file says, is
  skipped in training (logged with its name, counted per process; mmengine then fetches another
  image) and raises :class:`BadDataError` naming it in test mode (skipping would bias the metric).
  Training stops when ``max_skipped_images`` distinct images were skipped: the data is then
  broken, not unlucky;
* any other exception of the pipeline is re-raised as it was, with a note naming the image.

Decoding itself is mmcv's ``LoadImageFromFile`` (OpenCV, colour): grayscale, RGBA and 16-bit
images arrive as 8-bit 3-channel BGR, as mmdet always did. ``tools/misc/check_dataset.py`` finds
all of these problems before training.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from typing import Any, Optional

from mmdet.datasets import CocoDataset
from mmengine.fileio import get as get_bytes
from mmengine.logging import print_log

from .checks import (
    PROBLEMS,
    BadDataError,
    box_problem,
    decode_problem,
    decoded_shape_note,
    describe,
    malformed_field,
    malformed_image_field,
)

_EXAMPLES = 5  # annotation ids / file names quoted per problem
CHECKER_HINT = 'tools/misc/check_dataset.py CONFIG lists every problem of the dataset'
FILE_CHECKER_HINT = (
    'tools/misc/check_dataset.py --ann-file FILE --img-dir DIR lists every problem of the file'
)


class CheckedCocoDataset(CocoDataset):
    """mmdet's ``CocoDataset`` plus the checks of this module's docstring.

    Args:
        missing_images: what to do with image files that are missing or empty when the dataset
            is built: ``'error'`` (stop, naming them), ``'skip'`` (leave them out, counted and
            logged) or ``'off'`` (no ``stat`` at start; such images are then skipped while
            loading, like corrupt ones). Only local files are checked (not ``s3://`` etc.).
        max_skipped_images: in training, stop once this many distinct images (per loading
            process) were skipped while loading.
        *args, **kwargs: those of mmdet's ``CocoDataset``.
    """

    def __init__(
        self, *args, missing_images: str = 'error', max_skipped_images: int = 100, **kwargs
    ) -> None:
        if missing_images not in ('error', 'skip', 'off'):
            raise ValueError(
                "CheckedCocoDataset: missing_images must be 'error', 'skip' or "
                f"'off', got {missing_images!r}"
            )
        if max_skipped_images < 1:
            raise ValueError(
                f'CheckedCocoDataset: max_skipped_images must be >= 1, got {max_skipped_images}'
            )
        self.missing_images = missing_images
        self.max_skipped_images = max_skipped_images
        self._skipped: dict[int, str] = {}  # dataset index -> problem, in this process
        super().__init__(*args, **kwargs)  # loads and filters (full_init) unless lazy_init

    # ---- annotation file ---------------------------------------------------------------------
    def load_data_list(self) -> list[dict]:
        self._counts: Counter = Counter()
        self._examples: dict[str, list] = defaultdict(list)
        self._unlisted: Counter = Counter()
        self._category_names: Optional[dict[int, str]] = None
        try:
            return super().load_data_list()
        except json.JSONDecodeError as error:
            raise BadDataError(
                f'{self.ann_file} is not valid JSON ({error}); re-export it.'
            ) from error
        except KeyError as error:  # pycocotools indexes the file with bare ann['key'] lookups
            raise BadDataError(
                f'{self.ann_file}: an image or annotation entry has no {error}; COCO needs '
                'images with id, file_name, width, height and annotations with id, image_id, '
                f'category_id, bbox, area. {FILE_CHECKER_HINT}.'
            ) from error

    def parse_data_info(self, raw_data_info: dict) -> dict:
        if self._category_names is None:  # first image: self.coco exists while parsing
            self._check_classes()
        img = raw_data_info['raw_img_info']
        field = malformed_image_field(img)
        if field is not None:
            raise BadDataError(
                f'{self.ann_file}: image id {img.get("id")} has no valid '
                f'{field!r}: {describe("malformed_image_entry")}'
            )
        for ann in raw_data_info['raw_ann_info']:
            if not ann.get('ignore', False):
                self._count_annotation(ann, img)
        return super().parse_data_info(raw_data_info)

    def _check_classes(self) -> None:
        categories = self.coco.dataset.get('categories', [])
        self._category_names = {c['id']: c['name'] for c in categories}
        file_names = [c['name'] for c in categories]
        classes = tuple(self.metainfo['classes'])
        unknown = [name for name in classes if name not in file_names]
        if unknown:
            raise BadDataError(
                f'metainfo.classes names {unknown}, which {self.ann_file} does not have; its '
                f"categories are {file_names}. Spell metainfo.classes as the file's "
                '"categories" names.'
            )
        twice = sorted({name for name in classes if file_names.count(name) > 1})
        if twice:
            raise BadDataError(
                f'{self.ann_file} has several categories named {twice}: each '
                'listed class must name one category; rename them in the file.'
            )
        in_file_order = tuple(name for name in file_names if name in classes)
        if in_file_order != classes:
            raise BadDataError(
                f'metainfo.classes {classes} is not in the order of the categories of '
                f"{self.ann_file}: mmdet's CocoDataset and CocoMetric number the labels in the "
                'order of the file, so class names would be attached to the wrong labels. List '
                f'the classes in that order: {in_file_order}'
            )

    def _count_annotation(self, ann: dict, img: dict) -> None:
        if malformed_field(ann) is not None:
            raise BadDataError(
                f'{self.ann_file}: annotation id {ann.get("id")} (image {img["file_name"]}) has '
                f'no valid {malformed_field(ann)!r}: {describe("malformed_annotation")}'
            )
        category = ann['category_id']
        if category not in self._category_names:
            problem = 'unknown_category'
        elif category not in self.cat2label:
            self._unlisted[self._category_names[category]] += 1
            return
        else:
            problem = box_problem(ann, img['width'], img['height'])
        if problem is not None:
            self._counts[problem] += 1
            if len(self._examples[problem]) < _EXAMPLES:
                self._examples[problem].append(ann.get('id'))

    def filter_data(self) -> list[dict]:
        kept = super().filter_data()
        self._log_annotation_summary(kept)
        kept = self._check_image_files(kept)
        if not kept:
            raise BadDataError(
                f'{self.ann_file}: no image left to use (images listed: '
                f'{len(self.data_list)}, filter_cfg={self.filter_cfg}). '
                f'{CHECKER_HINT}.'
            )
        return kept

    def _log_annotation_summary(self, kept: list[dict]) -> None:
        name = f'{type(self).__name__} ({self.ann_file})'
        boxes = sum(len(info['instances']) for info in kept)
        lines = [f'{name}: {len(kept)} of {len(self.data_list)} images used, {boxes} boxes.']
        warn = False
        for problem, count in self._counts.items():
            severity, what, fix = PROBLEMS[problem]
            verb = 'dropped' if severity == 'dropped' else 'kept'
            warn |= severity == 'dropped'
            lines.append(
                f'  {verb} {count} box(es): {what} (annotation ids '
                f'{self._examples[problem]}{", ..." if count > _EXAMPLES else ""}); '
                f'{fix}.'
            )
        if self._unlisted:
            lines.append(
                f'  left out {sum(self._unlisted.values())} boxes of categories not in '
                f'metainfo.classes: {dict(self._unlisted.most_common(10))}.'
            )
        empty = sum(not info['instances'] for info in self.data_list)
        empty_kept = sum(not info['instances'] for info in kept)
        if empty:
            lines.append(
                f'  {empty} images have no box of the listed classes: {empty_kept} '
                f'kept as background, {empty - empty_kept} dropped '
                f'(filter_cfg={self.filter_cfg}).'
            )
        others_dropped = len(self.data_list) - len(kept) - (empty - empty_kept)
        if others_dropped:
            lines.append(
                f'  {others_dropped} images with boxes dropped by '
                f'filter_cfg={self.filter_cfg} (min_size: shorter side in pixels).'
            )
        if warn:
            lines.append(f'  {CHECKER_HINT}.')
        print_log(
            '\n'.join(lines), logger='current', level=logging.WARNING if warn else logging.INFO
        )

    # ---- image files at start ----------------------------------------------------------------
    def _local(self, path: str) -> bool:
        backend = (self.backend_args or {}).get('backend', 'local')
        return backend == 'local' and '://' not in path

    def _check_image_files(self, data_list: list[dict]) -> list[dict]:
        if self.missing_images == 'off':
            return data_list
        bad: dict[str, list[str]] = defaultdict(list)
        bad_ids = set()
        for info in data_list:
            path = info['img_path']
            if not self._local(path):
                continue
            try:
                empty = os.stat(path).st_size == 0
            except OSError:  # FileNotFoundError, NotADirectoryError, PermissionError ...
                bad['missing_image'].append(path)
                bad_ids.add(info['img_id'])
                continue
            if empty:
                bad['empty_image'].append(path)
                bad_ids.add(info['img_id'])
        if not bad:
            return data_list
        lines = [
            f'{type(self).__name__} ({self.ann_file}): {len(bad_ids)} of {len(data_list)} '
            'image files cannot be used:'
        ]
        for problem, paths in bad.items():
            more = f' and {len(paths) - _EXAMPLES} more' if len(paths) > _EXAMPLES else ''
            lines.append(f'  {len(paths)}: {describe(problem)}: {paths[:_EXAMPLES]}{more}')
        if len(bad.get('missing_image', [])) == len(data_list):
            lines.append(
                f'  none exists: data_root / data_prefix.img probably point to the '
                f'wrong folder (images are looked up as {data_list[0]["img_path"]!r}).'
            )
        if self.missing_images == 'error':
            lines.append(
                "  Fix the files, or set missing_images='skip' in this dataset's "
                'config to train without them. ' + CHECKER_HINT + '.'
            )
            raise BadDataError('\n'.join(lines))
        lines.append("  Left out (missing_images='skip').")
        print_log('\n'.join(lines), logger='current', level=logging.WARNING)
        return [info for info in data_list if info['img_id'] not in bad_ids]

    # ---- loading -----------------------------------------------------------------------------
    def prepare_data(self, idx: int) -> Any:
        if idx in self._skipped:
            return None  # known bad: mmengine fetches another image without reading this again
        data_info = self.get_data_info(idx)
        path = data_info['img_path']
        try:
            data = self.pipeline(data_info)
        except Exception as error:
            problem, detail = self._diagnose(path)
            if problem is None:  # the image is fine: not a data problem, re-raise as it was
                if hasattr(error, 'add_note'):  # Python >= 3.11
                    error.add_note(f'(while loading {path}, {self.ann_file})')
                raise
            return self._bad_image(idx, path, problem, detail, error)
        expected = (data_info.get('height'), data_info.get('width'))
        decoded = data_info.get('ori_shape')  # set by LoadImageFromFile on this dict
        if (
            data is not None
            and decoded is not None
            and None not in expected
            and tuple(decoded[:2]) != expected
        ):
            return self._bad_image(
                idx, path, 'size_mismatch', decoded_shape_note(tuple(decoded[:2]), expected)
            )
        return data

    def _diagnose(self, path: str) -> tuple[Optional[str], Optional[str]]:
        try:
            data = get_bytes(path, backend_args=self.backend_args)
        except FileNotFoundError:
            return 'missing_image', None
        except OSError as error:
            return 'missing_image', f'{type(error).__name__}: {error}'
        return decode_problem(data)[0], None

    def _bad_image(
        self,
        idx: int,
        path: str,
        problem: str,
        detail: Optional[str],
        error: Optional[BaseException] = None,
    ) -> None:
        message = f'{path}: {describe(problem)}' + (f' ({detail})' if detail else '')
        if self.test_mode:
            raise BadDataError(
                f'{message}. In test mode every image counts, so nothing is '
                f'skipped. {CHECKER_HINT}.'
            ) from error
        self._skipped[idx] = problem
        limit = min(self.max_skipped_images, len(self))
        if len(self._skipped) >= limit:
            raise BadDataError(
                f'{type(self).__name__} ({self.ann_file}): {len(self._skipped)} images skipped '
                f'in this process (limit: max_skipped_images={self.max_skipped_images}, or all '
                f'{len(self)} images), the last one {message}. The dataset looks broken: '
                f'{CHECKER_HINT}.'
            ) from error
        print_log(
            f'{type(self).__name__}: skipped {message}. {len(self._skipped)} image(s) '
            f'skipped so far in this process; training goes on with another image '
            f'(it stops at {limit}).',
            logger='current',
            level=logging.WARNING,
        )
        return None
