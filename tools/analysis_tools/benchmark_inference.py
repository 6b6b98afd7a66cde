"""Inference paths side by side: mmdet's ``DeformableDETR.predict`` and every fast path of ours.

    python tools/analysis_tools/benchmark_inference.py [--threads 2] [--repeat 5] [--warmup 1]
        [--compile] [--backends onnxruntime openvino openvino-bf16] [--onnx model.onnx] [--profile]

The R-50 primitive config (``configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py``) and
mmdet's own config of it, with the same random weights (mmdet's initialisation, moved off it so
that every branch computes, then converted into ours), one random 800x1216 image, float32 unless
the row says otherwise. Rows:

* ``mmdet predict``: mmdet 3.3's ``DeformableDETR`` (``test_step``: its CPU attention is mmcv's
  ``grid_sample`` reference);
* ``ours unfused``: our ``test_step`` with ``eval_fusion=False``;
* ``ours fused``: our ``test_step`` as every tool runs it (``models/eval_fusion.py``);
* ``ours bf16``: the fused path under ``--precision bf16`` (CPU autocast; attention in float32);
* ``ours compiled`` (``--compile``): ``torch.compile`` of our ``predict``; its compile time is
  printed apart, with the number of images after which it pays for itself;
* one row per ``--backends`` entry: the exported ONNX file (``mmdet_deformdetr/deploy``) through
  ``OnnxDetector(..., backend=...)``; a backend other than onnxruntime needs that argument.

Runs alternate between the rows (ABC...ABC...), so load from other processes hits all alike;
printed: the CPU, threads, each row's median and its speed-up over mmdet, and the largest box and
score differences and label agreement against ``ours fused`` float32 (``differences``).
``--profile`` adds torch.profiler's operator table of the fused float32 path.
"""

import argparse
import copy
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks' helpers

from benchmark_fps import device_name  # noqa: E402
from benchmark_train_step import build_pair, make_batch  # noqa: E402

Detections = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # boxes (k, 4), scores, labels


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2, help='torch (and backend) threads')
    parser.add_argument('--repeat', type=int, default=5, help='timed runs per row')
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs per row first')
    parser.add_argument('--compile', action='store_true', help='add the torch.compile row')
    parser.add_argument(
        '--backends',
        nargs='*',
        default=[],
        choices=['onnxruntime', 'openvino', 'openvino-bf16'],
        help="ONNX backends to add (openvino-bf16: OpenVINO's bf16 inference precision)",
    )
    parser.add_argument('--onnx', help='reuse this export of the same model (seed 0)')
    parser.add_argument('--profile', action='store_true', help='operator table of ours fused')
    return parser.parse_args()


def build_models() -> Tuple[torch.nn.Module, torch.nn.Module]:
    """(mmdet's model, ours) with the same weights, off their initialisation, in eval mode."""
    theirs, _, ours, _ = build_pair('plain')
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # off the zero initialisations (attention logits, box deltas)
        for name, param in theirs.named_parameters():
            if not name.startswith('backbone.'):
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    ours.load_state_dict(theirs.state_dict())  # our converter, through the load pre-hook
    return theirs.eval(), ours.eval()


def detections(samples: list) -> Detections:
    instances = samples[0].pred_instances
    return instances.bboxes, instances.scores, instances.labels


def step_row(model: torch.nn.Module, batch: dict, setup: Callable[[], object]):
    """A row running ``model.test_step`` on a copy of ``batch`` inside ``setup()``'s context."""

    def run() -> Detections:
        with torch.no_grad(), setup():
            return detections(model.test_step(copy.deepcopy(batch)))

    return run


def onnx_row(ours: torch.nn.Module, batch: dict, backend: str, onnx_path: str):
    from mmdet.registry import MODELS  # noqa: F401  (the default scope is set by main)
    from mmengine.config import Config

    from mmdet_deformdetr import configs_root
    from mmdet_deformdetr.deploy import OnnxDetector

    cfg = Config.fromfile(configs_root() / 'deformable_detr' / PRIMITIVE)
    backend, _, ov_precision = backend.partition('-')  # 'openvino-bf16': the bf16 hint
    runtime = OnnxDetector(
        onnx_path,
        cfg,
        num_threads=torch.get_num_threads(),
        backend=backend,
        ov_precision=ov_precision or 'f32',
    )
    images = ours.data_preprocessor(copy.deepcopy(batch), False)['inputs']

    def run() -> Detections:
        boxes, scores, labels = (torch.from_numpy(array)[0] for array in runtime.run(images))
        return boxes, scores, labels

    return run


PRIMITIVE = 'deformable-detr_r50_16xb2-50e_coco.py'


def compiled_row(ours: torch.nn.Module, batch: dict) -> Tuple[Callable, float]:
    """A row running a ``torch.compile``d copy of our ``predict``; and its compile seconds
    (the first call minus one eager call)."""
    model = copy.deepcopy(ours)
    model.predict = torch.compile(model.predict)
    start = time.perf_counter()
    step_row(model, batch, torch.no_grad)()
    first = time.perf_counter() - start
    return step_row(model, batch, torch.no_grad), first


def alternate(rows: Dict[str, Callable], repeat: int, warmup: int):
    times: Dict[str, List[float]] = {name: [] for name in rows}
    outputs: Dict[str, Detections] = {}
    for index in range(warmup + repeat):
        for name, run in rows.items():
            start = time.perf_counter()
            outputs[name] = run()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}, outputs


def differences(got: Detections, want: Detections) -> str:
    """Largest differences of ``got`` to ``want``: each detection of ``want`` is paired with the
    box of ``got`` with the same label nearest to it (L-inf, pixels), so that two detections
    trading places in the score order do not count as moved boxes; scores compare in score
    order; matched = share of ``want``'s detections with a same-label box within 1 px."""
    distance = (want[0].float()[:, None] - got[0].float()[None]).abs().amax(-1)
    distance[want[2][:, None] != got[2][None]] = float('inf')
    nearest = distance.min(1).values
    matched = (nearest <= 1.0).float().mean().item()
    boxes = nearest[nearest <= 1.0].max().item() if matched > 0 else float('inf')
    scores = (got[1].float() - want[1].float()).abs().max().item()
    return f'box {boxes:.1e} px, score {scores:.1e}, matched {100 * matched:.0f} %'


def main() -> None:
    args = parse_args()
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    import mmdet_deformdetr  # noqa: F401  (registers our modules)
    from mmdet_deformdetr.engine.inference_precision import inference_autocast

    register_all_modules(init_default_scope=False)
    init_default_scope('mmdet')
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    theirs, ours = build_models()
    unfused = copy.deepcopy(ours)
    unfused.eval_fusion = False
    batch = make_batch(1)
    rows: Dict[str, Callable] = {
        'mmdet predict': step_row(theirs, batch, lambda: inference_autocast('fp32')),
        'ours unfused': step_row(unfused, batch, lambda: inference_autocast('fp32')),
        'ours fused': step_row(ours, batch, lambda: inference_autocast('fp32')),
        'ours bf16 (fused)': step_row(ours, batch, lambda: inference_autocast('bf16')),
    }
    compile_seconds = None
    if args.compile:
        rows['ours compiled'], compile_seconds = compiled_row(ours, batch)
    with tempfile.TemporaryDirectory() as folder:
        if args.backends:
            onnx_path = args.onnx
            if onnx_path is None:
                from mmdet_deformdetr.deploy import export_onnx

                onnx_path = str(Path(folder) / 'model.onnx')
                export_onnx(copy.deepcopy(ours), onnx_path)  # it switches the attention impl
            for backend in args.backends:
                rows[f'{backend} (ONNX)'] = onnx_row(ours, batch, backend, onnx_path)
        medians, outputs = alternate(rows, args.repeat, args.warmup)
    cpu = device_name(torch.device('cpu'))
    print(
        f'R-50 primitive config, random weights, one 800x1216 image, {cpu}, median of '
        f'{args.repeat} after {args.warmup} warm-up, rows alternating'
    )
    reference = outputs['ours fused']
    print(f'{"path":<20} {"median":>9} {"vs mmdet":>9}   differences to ours fused float32')
    for name, median in medians.items():
        ratio = medians['mmdet predict'] / median
        print(
            f'{name:<20} {median:>8.2f}s {ratio:>8.2f}x   {differences(outputs[name], reference)}'
        )
    print(f'inference copy of ours built {ours._eval_fusion_cache.builds} time(s)')
    if compile_seconds is not None:
        saving = medians['ours fused'] - medians['ours compiled']
        pays = f'after {compile_seconds / saving:.0f} images' if saving > 0 else 'never'
        print(f'torch.compile: first call {compile_seconds:.1f} s; pays for itself {pays}')
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            rows['ours fused']()
        print(profiler.key_averages().table(sort_by='self_cpu_time_total', row_limit=25))


if __name__ == '__main__':
    main()
