"""Check a COCO-format dataset before training: every image readable (header, or full decode),
its size as the annotation file says, boxes valid, categories known, classes as the file's.

    python tools/misc/check_dataset.py CONFIG [--split train|val|test] [--cfg-options K=V ...]
    python tools/misc/check_dataset.py --ann-file A.json --img-dir DIR [--classes a b ...]

With a config, the dataset settings of ``{split}_dataloader.dataset`` are used (data_root,
ann_file, data_prefix.img, metainfo.classes), wrappers such as RepeatDataset unwrapped. Exit code:
0 when nothing would stop training or skip an image, 1 otherwise (``--strict``: also when boxes
would be dropped), 2 for bad arguments.
"""

import argparse
import os
import sys
import time
from typing import List, Optional, Tuple


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('config', nargs='?', help='a config whose dataloader dataset to check')
    parser.add_argument('--split', choices=('train', 'val', 'test'), default='train')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        default={},
        help='override config settings, as in tools/train.py',
    )
    parser.add_argument('--ann-file', help='COCO JSON (instead of a config)')
    parser.add_argument('--img-dir', help='image folder of --ann-file')
    parser.add_argument('--classes', nargs='+', help='classes to train on (default: all)')
    parser.add_argument(
        '--decode',
        action='store_true',
        help='decode every image fully, as training does (slower than headers)',
    )
    parser.add_argument('--nproc', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--examples', type=int, default=10, help='examples shown per problem')
    parser.add_argument(
        '--strict', action='store_true', help='exit 1 also when boxes would be dropped'
    )
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    if (args.config is None) == (args.ann_file is None):
        parser.error('give either CONFIG or --ann-file (with --img-dir)')
    if args.ann_file is not None and args.img_dir is None:
        parser.error('--ann-file needs --img-dir')
    return args


SPLIT_USE = dict(
    train='training reads',
    val='validation during training reads',
    test='tools/test.py reads',
)


def dataset_from_config(path: str, split: str, options: dict) -> Tuple[str, str, Optional[tuple]]:
    """``(ann_file, img_dir, classes)`` of ``{split}_dataloader.dataset`` in the config."""
    return dataset_of(load_config(path, options), split)


def load_config(path: str, options: dict):
    """The config with ``--cfg-options`` merged (its custom_imports register our modules)."""
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    cfg = Config.fromfile(path)
    cfg.merge_from_dict(options)
    register_all_modules(init_default_scope=False)
    return cfg


def split_note(cfg, split: str) -> str:
    """Which dataloader ``--split`` reads, and the splits whose dataloader reads another file
    (the demo validates on a subset of the file its test reads, for instance)."""
    ann_file = dataset_of(cfg, split)[0]
    others = []
    for other in SPLIT_USE:
        if other != split and cfg.get(f'{other}_dataloader') is not None:
            try:
                other_file = dataset_of(cfg, other)[0]
            except SystemExit:  # not a COCO-format dataset: nothing to compare
                continue
            if other_file != ann_file and split != 'train' and other != 'train':
                others.append(f'{other}_dataloader reads {other_file} (--split {other})')
    return (
        f'--split {split}: the annotation file of {split}_dataloader.dataset (what '
        f'{SPLIT_USE[split]})' + ''.join(f'; {note}' for note in others)
    )


def dataset_of(cfg, split: str) -> Tuple[str, str, Optional[tuple]]:
    """``(ann_file, img_dir, classes)`` of ``{split}_dataloader.dataset`` in ``cfg``."""
    from mmdet.registry import DATASETS

    path = cfg.filename
    key = f'{split}_dataloader'
    if cfg.get(key) is None:
        raise SystemExit(f'{path} has no {key}')
    dataset = cfg[key]['dataset']
    while 'dataset' in dataset and 'ann_file' not in dataset:  # RepeatDataset, ClassBalanced...
        dataset = dataset['dataset']
    if 'ann_file' not in dataset:
        raise SystemExit(f'{key}.dataset of {path} has no ann_file: not a COCO-format dataset')
    root = dataset.get('data_root') or ''
    prefix = (dataset.get('data_prefix') or {}).get('img', '')
    classes = (dataset.get('metainfo') or {}).get('classes')
    if classes is None:  # the dataset class's default, e.g. COCO's 80
        dataset_class = DATASETS.get(dataset['type'])
        classes = getattr(dataset_class, 'METAINFO', {}).get('classes')
    return (
        os.path.join(root, dataset['ann_file']),
        os.path.join(root, prefix),
        tuple(classes) if classes is not None else None,
    )


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from mmdet_deformdetr.datasets.dataset_report import check_coco

    if args.config:
        cfg = load_config(args.config, args.cfg_options)
        ann_file, img_dir, classes = dataset_of(cfg, args.split)
        print(split_note(cfg, args.split))
    else:
        ann_file, img_dir = args.ann_file, args.img_dir
        classes = tuple(args.classes) if args.classes else None
    print(
        f'checking {ann_file} with images in {img_dir}'
        + (f', classes {classes}' if classes else '')
        + ('' if args.decode else ' (headers; --decode for pixels)')
    )
    start = time.perf_counter()
    report = check_coco(
        ann_file,
        img_dir,
        classes,
        decode=args.decode,
        nproc=args.nproc,
        progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - start
    print('\n' + report.summary(args.examples))
    print(
        f'{report.num_images} images in {elapsed:.1f} s '
        f'({report.num_images / max(elapsed, 1e-9):.0f} images/s, {args.nproc} processes)'
    )
    failing = report.count('error') + (report.count('dropped') if args.strict else 0)
    return 1 if failing else 0


if __name__ == '__main__':
    sys.exit(main())
