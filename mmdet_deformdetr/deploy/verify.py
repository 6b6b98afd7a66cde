"""Check a deployed file against the PyTorch model it came from, on a COCO-format val split.

Every image of the split goes through the model (``test_step``, what ``tools/test.py`` runs, batch
1) and through each backend (the exported graph, same test pipeline, batch 1); per path the COCO
bbox mAP (mmdet's ``CocoMetric``) and per backend the differences to PyTorch (``differences``:
detections matched by score within the score tolerance and by position), the largest box
difference in original-image pixels, the largest score difference, the fraction of detections
with the same label, and the median latency of the model call (pre-processing excluded: the same
for every path).
"""

import contextlib
import copy
import io
import logging
import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from mmdet.evaluation import CocoMetric
from mmdet.structures import DetDataSample

from ..console.quiet import mmengine_logger_at
from ..engine.inference_precision import BF16_MAP_TOLERANCE, inference_autocast
from .onnx_runtime import OnnxDetector

#: the score window that pairs detections of a bfloat16 path with PyTorch's (bfloat16 keeps 8
#: significant bits: scores move by up to about 1e-2)
BF16_SCORE_WINDOW = 2e-2


@dataclass
class Tolerances:
    """Largest differences a backend may show against PyTorch (the defaults of
    ``tools/deployment/verify_deploy.py``, docs/deployment.md says why)."""

    bbox_map: float = 0.001
    # bfloat16 paths (PyTorch under autocast, OpenVINO's bf16 hint) move scores by design: they
    # are judged on mAP only, with the bound that --precision auto applies
    bbox_map_bf16: float = BF16_MAP_TOLERANCE
    box: float = 1.0
    score: float = 1e-3
    label_agreement: float = 0.99


@dataclass
class PathReport:
    """One path's results over the split; the difference fields stay None for PyTorch."""

    name: str
    bbox_map: float = float('nan')
    latencies: List[float] = field(default_factory=list)
    max_box_diff: Optional[float] = None
    max_score_diff: Optional[float] = None
    label_agreement: Optional[float] = None
    failures: List[str] = field(default_factory=list)
    bf16: bool = False  # judged on mAP only (Tolerances.bbox_map_bf16)

    @property
    def median_latency(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float('nan')


def coco_bbox_map(
    ann_file: Union[str, Path], dataset_meta: dict, samples: Sequence[DetDataSample]
) -> float:
    """COCO bbox mAP of ``samples`` (with ``img_id``, ``ori_shape`` and ``pred_instances``),
    over exactly the images they cover, with mmdet's ``CocoMetric``."""
    metric = CocoMetric(ann_file=str(ann_file), metric='bbox')
    metric.dataset_meta = dataset_meta
    metric.img_ids = [sample.img_id for sample in samples]
    for sample in samples:
        metric.process({}, [sample.to_dict()])
    # not mmdet's and pycocotools' tables for every path
    with mmengine_logger_at(logging.WARNING), contextlib.redirect_stdout(io.StringIO()):
        results = metric.evaluate(len(samples))
    return float(results['coco/bbox_mAP'])


def differences(
    expected: Sequence[DetDataSample], got: Sequence[DetDataSample], score_window: float = 1e-3
) -> Tuple[float, float, float]:
    """Largest box difference (pixels), largest score difference and label agreement between
    two runs over the same images.

    Scores compare rank by rank (both lists are sorted by score, so a swap of two nearly equal
    scores moves no value). Each detection of ``expected`` is matched to the detection of ``got``
    whose score is within ``score_window`` of its own and whose box is closest (largest
    coordinate difference), one with the same label first: two detections whose scores differ by
    float rounding may trade ranks between runtimes, and comparing them by rank would report the
    distance between two different objects. A detection with no partner in the window counts as
    an infinite box difference and a different label.
    """
    box_diff, score_diff, same, total = 0.0, 0.0, 0, 0
    for want, have in zip(expected, got):
        want, have = want.pred_instances, have.pred_instances
        if len(want) != len(have):
            raise ValueError(f'{len(have)} detections against {len(want)} from PyTorch')
        if not len(want):
            continue
        score_diff = max(
            score_diff,
            float(
                (have.scores.sort(descending=True)[0] - want.scores.sort(descending=True)[0])
                .abs()
                .max()
            ),
        )
        # (n_want, n_have): largest coordinate difference, infinite outside the score window;
        # a partner with the same label first (one query's box can be kept for several labels)
        distance = (want.bboxes[:, None, :] - have.bboxes[None, :, :]).abs().amax(dim=-1)
        in_window = (want.scores[:, None] - have.scores[None, :]).abs() <= score_window
        distance = distance.double().masked_fill(~in_window, float('inf'))
        same_label = want.labels[:, None] == have.labels[None, :]
        nearest_same = distance.masked_fill(~same_label, float('inf')).min(dim=1)[0]
        nearest = torch.where(nearest_same.isfinite(), nearest_same, distance.min(dim=1)[0])
        box_diff = max(box_diff, float(nearest.max()))
        same += int(nearest_same.isfinite().sum())
        total += len(want)
    return box_diff, score_diff, same / total if total else 1.0


def check(report: PathReport, reference: PathReport, tolerances: Tolerances) -> None:
    """Fill ``report.failures`` with every tolerance that ``report`` exceeds."""
    map_diff = abs(report.bbox_map - reference.bbox_map)
    bound = tolerances.bbox_map_bf16 if report.bf16 else tolerances.bbox_map
    if not map_diff <= bound:  # NaN fails too
        report.failures.append(
            f'bbox mAP {report.bbox_map:.4f} vs PyTorch {reference.bbox_map:.4f}: '
            f'|diff| {map_diff:.4f} > {bound}'
        )
    if report.bf16:
        return
    if not report.max_box_diff <= tolerances.box:
        report.failures.append(f'max |box diff| {report.max_box_diff:.3g} px > {tolerances.box}')
    if not report.max_score_diff <= tolerances.score:
        report.failures.append(f'max |score diff| {report.max_score_diff:.3g} > {tolerances.score}')
    if not report.label_agreement >= tolerances.label_agreement:
        report.failures.append(
            f'label agreement {report.label_agreement:.4f} < {tolerances.label_agreement}'
        )


def run_pytorch(
    model: torch.nn.Module, items: Iterable[dict], precision: str = 'fp32'
) -> Tuple[list, List[float]]:
    """``model.test_step`` on each item (batch 1), in ``precision`` (``fp32`` or ``bf16``, as
    ``tools/test.py --precision``): the predictions and the latencies."""
    predictions, latencies = [], []
    model.eval()
    for item in items:
        data = dict(inputs=[item['inputs']], data_samples=[copy.deepcopy(item['data_samples'])])
        start = time.perf_counter()
        with torch.no_grad(), inference_autocast(precision):
            predictions.append(model.test_step(data)[0])
        latencies.append(time.perf_counter() - start)
    return predictions, latencies


def run_backend(detector: OnnxDetector, items: Iterable[dict]) -> Tuple[list, List[float]]:
    """The graph on each item (batch 1), pre-processed by the detector outside the timing."""
    predictions, latencies = [], []
    for item in items:
        packed = dict(inputs=item['inputs'], data_samples=copy.deepcopy(item['data_samples']))
        inputs, samples = detector.preprocess_packed([packed])
        start = time.perf_counter()
        predictions.extend(detector.detect(inputs, samples))
        latencies.append(time.perf_counter() - start)
    return predictions, latencies


def verify_deploy(
    model: torch.nn.Module,
    detectors: Dict[str, OnnxDetector],
    dataset,
    ann_file: Union[str, Path],
    tolerances: Tolerances = Tolerances(),
    pytorch_bf16: bool = False,
) -> List[PathReport]:
    """Run ``dataset`` (an mmdet dataset with the config's test pipeline) through ``model`` and
    each of ``detectors`` (name -> detector; a name ending in ``bf16`` is judged as a bfloat16
    path); the float32 PyTorch report first, then with ``pytorch_bf16`` PyTorch under bf16
    autocast, then one per backend, each with its ``failures`` (empty: within ``tolerances``)."""
    items = [dataset[index] for index in range(len(dataset))]
    reference = PathReport('pytorch')
    predictions, reference.latencies = run_pytorch(model, items)
    reference.bbox_map = coco_bbox_map(ann_file, dataset.metainfo, predictions)
    reports = [reference]
    runs = {name: partial(run_backend, detector) for name, detector in detectors.items()}
    if pytorch_bf16:
        runs = {'pytorch bf16': partial(run_pytorch, model, precision='bf16'), **runs}
    for name, run in runs.items():
        report = PathReport(name, bf16=name.endswith('bf16'))
        got, report.latencies = run(items)
        report.bbox_map = coco_bbox_map(ann_file, dataset.metainfo, got)
        window = BF16_SCORE_WINDOW if report.bf16 else tolerances.score
        report.max_box_diff, report.max_score_diff, report.label_agreement = differences(
            predictions, got, score_window=window
        )
        check(report, reference, tolerances)
        reports.append(report)
    return reports


def format_reports(reports: Sequence[PathReport]) -> str:
    """A table: one row per path, then one line per failed tolerance."""
    lines = [
        f'{"path":<24} {"bbox mAP":>9} {"max |box diff|":>15} {"max |score diff|":>17} '
        f'{"labels equal":>13} {"median latency":>15}  verdict'
    ]
    for report in reports:
        if report.max_box_diff is None:
            diffs = f'{"-":>15} {"-":>17} {"-":>13}'
            verdict = 'reference'
        else:
            diffs = (
                f'{report.max_box_diff:12.3g} px {report.max_score_diff:17.3g} '
                f'{100 * report.label_agreement:12.2f}%'
            )
            verdict = 'FAIL' if report.failures else 'ok'
        lines.append(
            f'{report.name:<24} {report.bbox_map:9.4f} {diffs} '
            f'{1000 * report.median_latency:12.1f} ms  {verdict}'
        )
    for report in reports:
        lines.extend(f'FAIL {report.name}: {failure}' for failure in report.failures)
    return '\n'.join(lines)
