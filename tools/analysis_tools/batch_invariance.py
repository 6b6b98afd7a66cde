"""Does a padded batch change an image's predictions? Each photograph alone against the same
photograph inside one padded batch of all of them, with the official computation of the padded
batch (``batch_invariant_eval=False``, what the official code and mmdet do) and with ours.

    python tools/analysis_tools/batch_invariance.py [--config CONFIG]
        [--variants plain refine two_stage] [--data-root tests/data/coco_photos]
        [--threads 2] [--double] [--computations official ours]

The model is the config's (default: the R-50 primitive config) with random weights, initialised
and moved off their zero initialisations (every parameter but the backbone's, as the other
benchmarks). The images go through the config's test pipeline and data preprocessor: alone one
at a time, and together as one batch, which the preprocessor pads to the largest. Compared are the
last decoder layer's raw outputs, query by query: the largest box difference in pixels of the
resized image, the largest score (sigmoid) difference, and the share of queries whose best class
is the same. Compared query by query, two nearly equal objectness scores that swap places
between the image alone and the batch (two-stage keeps its queries by rank) move a box as much
as a real difference would; so the predictions are also matched as sets: the two-stage queries
by their proposal boxes (how many of the kept proposals differ, and the largest box and score
difference of the queries that match), and the top-k detections by label and IoU > 0.99 (how
many have no partner). The batch is timed with each computation, alternating (medians of
``--repeat``), to show the cost of the masking; ``--double`` runs everything in float64, which
leaves only the rounding of the batch (float32 rounding differs between a batch and one image in
any case).
"""

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Dict, List

import torch
from mmdet.structures.bbox import bbox_overlaps
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmdet_deformdetr import configs_root  # (importing the package registers our modules)
from mmdet_deformdetr.analysis.data import eval_dataset

PRIMITIVE = configs_root() / 'deformable_detr' / 'deformable-detr_r50_16xb2-50e_coco.py'
PHOTOS = Path(__file__).resolve().parents[2] / 'tests' / 'data' / 'coco_photos'
VARIANTS = {
    'plain': dict(with_box_refine=False, as_two_stage=False),
    'refine': dict(with_box_refine=True, as_two_stage=False),
    'two_stage': dict(with_box_refine=True, as_two_stage=True),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='an image alone vs inside a padded batch')
    parser.add_argument('--config', default=str(PRIMITIVE), help='model config')
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument('--data-root', default=str(PHOTOS), help='a COCO-format set')
    parser.add_argument('--ann-file', default='annotations/instances.json')
    parser.add_argument('--img-prefix', default='images/')
    parser.add_argument('--threads', type=int, default=2, help='intra-op threads')
    parser.add_argument('--double', action='store_true', help='float64 weights and inputs')
    parser.add_argument('--repeat', type=int, default=1, help='timed batches per computation')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random weights')
    parser.add_argument(
        '--computations',
        nargs='+',
        choices=('official', 'ours'),
        default=['official', 'ours'],
        help='computations of the padded batch to compare with the images alone',
    )
    return parser.parse_args()


def build_model(cfg: Config, variant: str, seed: int) -> torch.nn.Module:
    from mmdet_deformdetr.analysis.random_model import build_random_model

    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.update(VARIANTS[variant])
    return build_random_model(model_cfg, seed)


#: two proposals (in pixels of the resized image) are the same token's when this close; tokens
#: of the finest level are 8 px apart
PROPOSAL_MATCH_PX = 0.5
#: two detections are the same when their labels are and their boxes overlap this much
DETECTION_MATCH_IOU = 0.99


def run_model(model: torch.nn.Module, data: dict, dtype: torch.dtype) -> Dict[str, object]:
    """What the model gives for a batch, as the detector's ``predict`` computes it.

    Returns a dict: ``scores (bs, nq, classes)`` sigmoid and ``boxes (bs, nq, 4)`` (cx, cy, w, h)
    of the last decoder layer, ``proposals (bs, nq, 4)`` the two-stage queries' proposal boxes
    (None for the others), boxes in pixels of each resized image; ``detections``: per image the
    top-k post-process (``InstanceData`` with ``bboxes`` xyxy, ``scores``, ``labels``).
    """
    samples = data['data_samples']
    with torch.no_grad():
        valid_hw = model.valid_sizes(samples)
        feats = model.extract_feat(data['inputs'].to(dtype), valid_hw)
        outputs = model.forward_transformer(feats, samples, valid_hw)
        logits, boxes = model.bbox_head(
            outputs['hidden_states'], outputs['init_reference'], outputs['inter_references']
        )
    metas = [sample.metainfo for sample in samples]
    scale = torch.tensor([[m['img_shape'][1], m['img_shape'][0]] * 2 for m in metas], dtype=dtype)
    return dict(
        scores=logits[-1].sigmoid(),
        boxes=boxes[-1] * scale[:, None],
        proposals=outputs['init_reference'] * scale[:, None] if model.as_two_stage else None,
        detections=model.bbox_head.predict_by_feat(logits, boxes, metas, rescale=False),
    )


def compare(alone: List[Dict[str, object]], batch: Dict[str, object]) -> str:
    """Query by query: the largest box and score differences, and the share of queries whose
    best class is the same."""
    scores_b, boxes_b = batch['scores'], batch['boxes']
    box_diff = max((a['boxes'][0] - boxes_b[i]).abs().max().item() for i, a in enumerate(alone))
    score_diff = max((a['scores'][0] - scores_b[i]).abs().max().item() for i, a in enumerate(alone))
    same = [
        (a['scores'][0].argmax(-1) == scores_b[i].argmax(-1)).float() for i, a in enumerate(alone)
    ]
    agreement = torch.cat(same).mean().item()
    return (
        f'box {box_diff:9.3g} px  score {score_diff:9.3g}  same best class {100 * agreement:6.2f} %'
    )


def compare_as_sets(alone: List[Dict[str, object]], batch: Dict[str, object]) -> str:
    """Matched as sets: two-stage queries through their proposals (kept proposals with no
    partner, then the largest box and score differences over the matched queries) and the top-k
    detections by label and IoU (detections with no partner)."""
    parts = []
    if batch['proposals'] is not None:
        differing = total = 0
        box_diff = score_diff = 0.0
        for index, single in enumerate(alone):
            # (nq_batch, nq_alone) largest coordinate difference of the proposal boxes
            distance = (batch['proposals'][index][:, None] - single['proposals'][0][None]).abs()
            nearest, partner = distance.amax(-1).min(1)
            matched = nearest <= PROPOSAL_MATCH_PX
            differing += int((~matched).sum())
            total += matched.numel()
            if matched.any():
                rows, cols = matched.nonzero()[:, 0], partner[matched]
                box_diff = max(
                    box_diff,
                    (batch['boxes'][index][rows] - single['boxes'][0][cols]).abs().max().item(),
                )
                score_diff = max(
                    score_diff,
                    (batch['scores'][index][rows] - single['scores'][0][cols]).abs().max().item(),
                )
        parts.append(
            f'proposals differing {differing}/{total} ({100 * differing / total:.2f} %), '
            f'matched queries: box {box_diff:.3g} px, score {score_diff:.3g}'
        )
    unmatched = total = 0
    for index, single in enumerate(alone):
        mine, theirs = batch['detections'][index], single['detections'][0]
        overlap = bbox_overlaps(mine.bboxes, theirs.bboxes)
        same_label = mine.labels[:, None] == theirs.labels[None]
        partnered = ((overlap > DETECTION_MATCH_IOU) & same_label).any(1)
        unmatched += int((~partnered).sum())
        total += partnered.numel()
    parts.append(
        f'top-k detections without a partner {unmatched}/{total} ({100 * unmatched / total:.2f} %)'
    )
    return '; '.join(parts)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.double else torch.float32
    cfg = Config.fromfile(args.config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset = eval_dataset(cfg, args.data_root, args.ann_file, args.img_prefix)
    packed = [dataset[index] for index in range(len(dataset))]

    def collate(items: list) -> dict:
        return dict(
            inputs=[item['inputs'] for item in items],
            data_samples=[copy.deepcopy(item['data_samples']) for item in items],
        )

    cpu = next(
        (line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if 'model name' in line),
        'unknown CPU',
    )
    print(
        f'{Path(args.config).name}, random weights, {len(packed)} images of '
        f'{args.data_root}, {dtype}, {args.threads} threads, {cpu}'
    )
    for variant in args.variants:
        model = build_model(cfg, variant, args.seed).to(dtype)
        preprocess = model.data_preprocessor
        alone = [run_model(model, preprocess(collate([item]), False), dtype) for item in packed]
        batch = preprocess(collate(packed), False)
        model.padding_strides()  # found once per model: not part of the timings
        shapes = sorted({tuple(s.img_shape[:2]) for s in batch['data_samples']})
        results: Dict[str, Dict[str, object]] = {}
        times: Dict[str, List[float]] = {name: [] for name in args.computations}
        for _ in range(args.repeat):  # the computations alternate
            for name in args.computations:
                model.batch_invariant_eval = name == 'ours'
                start = time.perf_counter()
                results[name] = run_model(model, batch, dtype)
                times[name].append(time.perf_counter() - start)
        print(f'{variant}: batch {tuple(batch["inputs"].shape)}, image sizes {shapes}')
        for name in args.computations:
            print(
                f'  {name:<9} {compare(alone, results[name])}  '
                f'batch {statistics.median(times[name]):.2f} s'
            )
            print(f'  {"":<9} as sets: {compare_as_sets(alone, results[name])}')


if __name__ == '__main__':
    main()
