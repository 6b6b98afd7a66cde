"""Parameters and multiply-adds of a Deformable DETR config, averaged over dataset images at the
test pipeline's resolution: the paper's Table 1 "params" and "FLOPs" columns.

    python tools/analysis_tools/get_flops.py CONFIG [--num-images 100] [--data-root DIR]
        [--ann-file FILE] [--img-prefix DIR] [--impl cpu|pytorch] [--cfg-options ...]
        [--out result.json]

Built on mmengine's ``FlopAnalyzer`` (what ``mmengine.analysis.get_model_complexity_info`` and
mmdet's own ``get_flops.py`` use), with handles for the deformable attention
(``mmdet_deformdetr.analysis.flops``): one FLOP = one multiply-add, as the paper (fvcore /
detectron2) counts. Images come from the config's val set (``--data-root`` etc. point it
elsewhere), one at a time, through the test pipeline and the data preprocessor. Weights are
random (counts do not depend on them). ``--impl`` picks the attention path that is traced: our
C++ kernel (one fused op, default) or the ``grid_sample`` reference; both count the same.

Printed per term (averaged GMACs and share): backbone, input projection (the neck), encoder,
decoder (each with the attention sampling it contains), the rest of the transformer (two-stage
proposals), the detection head, the rest (padding-mask resizing); and what mmdet's get_flops.py
reports for the same model (its ``grid_sampler`` handle counts 4 of the 5 multiply-adds per
sampled value; on CPU its trace takes the reference path).
"""

import argparse
import json
import statistics
import warnings
from typing import Dict

import torch
from mmdet.registry import MODELS
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.config import Config, DictAction
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from torch import nn

import mmdet_deformdetr  # noqa: F401  (registers our modules)
from mmdet_deformdetr.analysis.data import eval_dataset
from mmdet_deformdetr.analysis.flops import MACS_PER_SAMPLE, deform_attn_handles
from mmdet_deformdetr.models.layers import MSDeformAttn

TERMS = (
    ('backbone', 'backbone'),
    ('input projection', 'neck'),
    ('encoder', 'transformer.encoder'),
    ('decoder', 'transformer.decoder'),
)
SAMPLING_OPS = (
    'PythonOp.MSDeformAttnCPUFunction',
    'PythonOp.MultiScaleDeformableAttnFunction',
    'grid_sampler',
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Params and GFLOPs (multiply-adds) of a config')
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--num-images',
        type=int,
        default=100,
        help='images of the val set to average over (the paper: the first 100)',
    )
    parser.add_argument('--data-root', help='override val_dataloader.dataset.data_root')
    parser.add_argument(
        '--ann-file',
        help='override the val annotation file (relative to the data root, or absolute)',
    )
    parser.add_argument('--img-prefix', help='override data_prefix.img of the val set')
    parser.add_argument(
        '--impl',
        choices=('cpu', 'pytorch'),
        default='cpu',
        help='deformable attention path to trace (the counts agree)',
    )
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config settings, KEY=VALUE'
    )
    parser.add_argument('--out', help='also write the result as JSON here')
    return parser.parse_args()


class _TensorForward(nn.Module):
    """``detector._forward(inputs, data_samples)`` as a module of one tensor, for the tracer."""

    def __init__(self, detector: nn.Module, data_samples) -> None:
        super().__init__()
        self.detector = detector
        self.data_samples = data_samples

    def forward(self, inputs: torch.Tensor):
        return self.detector._forward(inputs, self.data_samples)


def count_image(detector: nn.Module, data: dict) -> Dict[str, float]:
    """Multiply-adds of one preprocessed image, per term."""
    analyzer = FlopAnalyzer(_TensorForward(detector, data['data_samples']), data['inputs'])
    analyzer.set_op_handle(**deform_attn_handles())
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    by_module = analyzer.by_module()
    by_module_op = analyzer.by_module_and_operator()
    counts = {'total': by_module['']}
    for label, module in TERMS:
        counts[label] = by_module.get(f'detector.{module}', 0)
        counts[f'{label} sampling'] = sum(
            by_module_op.get(f'detector.{module}', {}).get(op, 0) for op in SAMPLING_OPS
        )
    counts['transformer, other'] = (
        by_module['detector.transformer'] - counts['encoder'] - counts['decoder']
    )
    counts['head'] = by_module.get('detector.bbox_head', 0)
    # what no sub-module owns: the padding masks' nearest resize (one per mask pixel)
    counts['detector, other'] = counts['total'] - sum(
        counts[label]
        for label in (
            'backbone',
            'input projection',
            'encoder',
            'decoder',
            'transformer, other',
            'head',
        )
    )
    return counts


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset = eval_dataset(cfg, args.data_root, args.ann_file, args.img_prefix)
    num_images = min(args.num_images, len(dataset))

    cfg.model.backbone.init_cfg = None  # random weights: no download, same counts
    detector = MODELS.build(cfg.model).eval()
    for module in detector.modules():
        if isinstance(module, MSDeformAttn):
            module.impl = args.impl
    params = parameter_count(detector)['']

    per_image = []
    sizes = []
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')
        for index in range(num_images):
            data = detector.data_preprocessor(pseudo_collate([dataset[index]]), False)
            sizes.append(tuple(data['inputs'].shape[-2:]))
            per_image.append(count_image(detector, data))
    mean = {key: statistics.fmean(image[key] for image in per_image) for key in per_image[0]}
    sampling = sum(mean[f'{label} sampling'] for label, _ in TERMS)
    mmdet_equivalent = mean['total'] - sampling / MACS_PER_SAMPLE

    mean_h = statistics.fmean(h for h, _ in sizes)
    mean_w = statistics.fmean(w for _, w in sizes)
    print(
        f'{args.config}: {num_images} images of {dataset.data_root} at the test '
        f"pipeline's size (mean {mean_h:.0f} x {mean_w:.0f})"
    )
    print(f'params: {params / 1e6:.2f} M')
    print(f'GFLOPs (multiply-adds): {mean["total"] / 1e9:.1f}')
    rows = [(label, mean[label], mean.get(f'{label} sampling')) for label, _ in TERMS]
    rows += [
        ('transformer, other', mean['transformer, other'], None),
        ('head', mean['head'], None),
        ('detector, other', mean['detector, other'], None),
    ]
    print(f'  {"term":<20}{"GMACs":>9}{"share":>8}   attention sampling inside')
    for label, value, inside in rows:
        extra = '' if not inside else f'{inside / 1e9:.2f} GMACs'
        print(f'  {label:<20}{value / 1e9:>9.2f}{100 * value / mean["total"]:>7.1f}%   {extra}')
    print(
        f"mmdet's get_flops.py on this model would report {mmdet_equivalent / 1e9:.1f} G "
        f'(its grid_sampler handle counts 4 of the {MACS_PER_SAMPLE} multiply-adds per '
        'sampled value)'
    )
    if args.out:
        with open(args.out, 'w') as handle:
            json.dump(
                dict(
                    config=args.config,
                    num_images=num_images,
                    mean_height=mean_h,
                    mean_width=mean_w,
                    params=params,
                    gflops=mean['total'] / 1e9,
                    terms={key: value / 1e9 for key, value in mean.items()},
                    mmdet_get_flops_gflops=mmdet_equivalent / 1e9,
                ),
                handle,
                indent=1,
            )


if __name__ == '__main__':
    main()
