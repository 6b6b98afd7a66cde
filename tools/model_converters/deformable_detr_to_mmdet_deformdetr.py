"""Convert a Deformable DETR checkpoint of any supported family into an mmdet_deformdetr file.

Families (detected from the file's contents; the table is
``mmdet_deformdetr.checkpoint.FAMILIES``): the official repository's ``.pth``
(``{'model', 'optimizer', 'lr_scheduler', 'epoch', 'args'}``), mmdet 3.x zoo files, Hugging Face
``DeformableDetrForObjectDetection`` (a directory with ``config.json`` and ``model.safetensors`` or
``pytorch_model.bin``, or one of those files), and our own files (a weights-only copy: the
training state of a training checkpoint, optimizer and schedulers, is not copied, and the tool
says so).

Examples::

    python tools/model_converters/deformable_detr_to_mmdet_deformdetr.py \
        r50_deformable_detr-checkpoint.pth deformable-detr_r50_official.pth
    python tools/model_converters/deformable_detr_to_mmdet_deformdetr.py \
        hf/deformable-detr-with-box-refine/ refine_from_hf.pth --num-classes 80

Reading never runs code from the file (``torch.load(weights_only=True)`` with a small allow-list,
whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says; ``--trust-global module.Class`` widens it for
one run). A refused, truncated or unreadable file ends the run with one message (exit status 1).
The output is
``{'meta': {...}, 'state_dict': {...}}`` in our keys, loadable with ``load_from=`` or
``mmengine.runner.load_checkpoint``. A report of matched, remapped, dropped, filled (and, with
``--config``, missing and unexpected) keys is printed. The classification branches keep their
channels unless ``--num-classes`` (or the ``--config`` model) asks for 80 where the file has 91
COCO-id channels (the official and Hugging Face files: remapped to mmdet's 80 by default).
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import torch

from mmdet_deformdetr.checkpoint import (
    OURS,
    CheckpointError,
    check_fits,
    convert_state_dict,
    identify_checkpoint,
    read_checkpoint,
    trusted_global_by_name,
)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='checkpoint file or Hugging Face model directory')
    parser.add_argument('dst', help='output .pth path')
    parser.add_argument(
        '--num-classes',
        type=int,
        help="classes of the target model: 91 COCO-id heads are remapped to mmdet's 80 when "
        "this is 80; other counts are kept as is (default: the --config model's count; without "
        "--config, 80 for files of another family and the file's own count for ours)",
    )
    parser.add_argument(
        '--config',
        help='our config file: check the converted keys against the '
        'model it builds (missing/unexpected keys, variant) before saving',
    )
    parser.add_argument(
        '--trust-global',
        action='append',
        default=[],
        metavar='module.Name',
        help='allow this pickled global when reading src (only for files you trust); repeatable',
    )
    parser.add_argument('--max-keys', type=int, default=10, help='keys listed per report section')
    return parser.parse_args(argv)


def _target_model(config_path: str) -> torch.nn.Module:
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import mmdet_deformdetr  # noqa: F401  (registers our modules)

    register_all_modules()
    cfg = Config.fromfile(config_path)
    cfg.model.get('backbone', {}).pop('init_cfg', None)  # no download just to read shapes
    return MODELS.build(cfg.model)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    extra_globals = [trusted_global_by_name(name) for name in args.trust_global]
    checkpoint, hf_config = read_checkpoint(args.src, extra_globals=extra_globals)
    family, state_dict, meta = identify_checkpoint(checkpoint, source=args.src)
    target = _target_model(args.config) if args.config else None
    num_classes = args.num_classes
    if num_classes is None and target is not None:
        num_classes = _num_classes(target)
    elif num_classes is None and family.name != OURS:
        num_classes = 80  # COCO in mmdet's 80 classes, the checkpoints of the other families
    converted, report = convert_state_dict(state_dict, num_classes=num_classes, family=family)
    if hf_config is not None:
        keep = (
            'with_box_refine',
            'two_stage',
            'num_feature_levels',
            'encoder_n_points',
            'decoder_n_points',
            'num_queries',
            'd_model',
        )
        meta.update({f'hf_config.{k}': hf_config[k] for k in keep if k in hf_config})
    if target is not None:
        check_fits(converted, target, report)
    print(report.summary(max_keys=args.max_keys))
    meta.update(converted_from=str(args.src), source_format=family.name, variant=report.variant)
    dropped = sorted(key for key in checkpoint if key not in ('meta', 'state_dict'))
    if family.name == OURS:
        meta.setdefault('note', 'already in mmdet_deformdetr keys; re-saved without training state')
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save({'meta': meta, 'state_dict': converted}, args.dst)
    if family.name == OURS:
        print(
            f'{args.src} is already in mmdet_deformdetr format: saved a weights-only copy '
            f'({len(converted)} tensors, meta) to {args.dst}'
            + (
                f'; the training state ({", ".join(dropped)}) is not copied (resume from the '
                'original file)'
                if dropped
                else ''
            )
        )
    else:
        print(f'saved {len(converted)} tensors to {args.dst}')
    return 0


def _num_classes(model: torch.nn.Module) -> Optional[int]:
    weight = model.state_dict().get('bbox_head.cls_branches.0.weight')
    return None if weight is None else int(weight.shape[0])


if __name__ == '__main__':
    try:
        sys.exit(main())
    except (CheckpointError, FileNotFoundError) as error:  # the message says what to do
        sys.exit(f'error: {error}')
