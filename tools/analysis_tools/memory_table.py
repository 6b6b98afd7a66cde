"""Training memory of Deformable DETR by image size and batch, with and without ``with_cp``.

    python tools/analysis_tools/memory_table.py measure [--cells 512x768x1 800x1200x1 ...]
        [--config CONFIG] [--with-cp off on] [--out work_dirs/memory_table.jsonl]
    python tools/analysis_tools/memory_table.py table [--out work_dirs/memory_table.jsonl]
    python tools/analysis_tools/memory_table.py time [--cells 384x576x1] [--repeat 3]

``measure`` runs, for each cell ``HxWxB`` (a batch of B images of H x W pixels, 5 boxes each),
one training forward pass of the config's model (R-50 primitive by default: randomly initialised,
nothing downloaded) with its loss, on the CPU in float32, and counts what the autograd graph holds
for the backward pass (``mmdet_deformdetr.analysis.ActivationMeter``: the distinct storages of
the saved tensors, plus the inputs of checkpointed layers). Each result is appended to ``--out``
as a JSON line: the activation bytes, the bytes of each encoder / decoder layer, and the bytes of
weights, gradients and AdamW state.

``table`` prints the Markdown table of ``docs/performance.md``: for short sides 512, 800, 1333
(long side x1.5) and batches 1, 2, 4, the activations and the peak estimate (weights + gradients +
AdamW state + activations, + with ``with_cp`` one encoder layer recomputed in the backward pass),
without and with ``with_cp``. Cells not measured are derived, marked ``*``, from the measured
batch-1 cell of the same size times the batch (activations are linear in the batch; ``table``
prints the measured ratios that show it).

``time`` prices ``with_cp``: training steps (forward, loss, backward) of the same model without
and with it, alternating, ``--repeat`` of each after one warm-up of each; prints the medians and
their ratio.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PRIMITIVE = ROOT / 'configs' / 'deformable_detr' / 'deformable-detr_r50_16xb2-50e_coco.py'
SIZES = ((512, 768), (800, 1200), (1333, 2000))
BATCHES = (1, 2, 4)
GIB = 2**30


def parse_cell(text: str) -> Tuple[int, int, int]:
    height, width, batch = (int(part) for part in text.lower().split('x'))
    return height, width, batch


def measure_cell(cfg, height: int, width: int, batch: int, with_cp: bool) -> Dict[str, object]:
    """One training forward pass of ``cfg.model`` on ``batch`` images of ``height x width``."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs

    from mmdet_deformdetr.analysis.activation_memory import (
        ActivationMeter,
        training_state_bytes,
    )

    model_cfg = cfg.model.copy()
    model_cfg.backbone.init_cfg = None  # nothing to download: the weights do not change sizes
    model_cfg.transformer.with_cp = with_cp
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    model.train()
    packed = demo_mm_inputs(
        batch_size=batch,
        image_shapes=[(3, height, width)] * batch,
        num_items=[5] * batch,
        num_classes=model_cfg.bbox_head.num_classes,
    )
    data = model.data_preprocessor(packed, True)
    encoder = list(model.transformer.encoder.layers)
    decoder = list(model.transformer.decoder.layers)
    start = time.perf_counter()
    with ActivationMeter(
        model, checkpointed=(encoder + decoder) if with_cp else (), per_module=encoder + decoder
    ) as meter:
        losses = model.loss(data['inputs'], data['data_samples'])
    seconds = time.perf_counter() - start
    result = dict(
        height=height,
        width=width,
        batch=batch,
        with_cp=with_cp,
        activations=meter.held_bytes,
        encoder_layers=meter.per_module_bytes[: len(encoder)],
        decoder_layers=meter.per_module_bytes[len(encoder) :],
        forward_seconds=round(seconds, 1),
        **training_state_bytes(model),
    )
    meter.release()
    del losses
    return result


def measure(args: argparse.Namespace) -> None:
    import torch
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import mmdet_deformdetr  # noqa: F401  (registers our modules)

    register_all_modules(init_default_scope=True)
    torch.set_num_threads(args.threads)
    cfg = Config.fromfile(args.config)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for cell in args.cells:
        height, width, batch = parse_cell(cell)
        for with_cp in args.with_cp:
            result = measure_cell(cfg, height, width, batch, with_cp == 'on')
            result.update(
                config=os.path.relpath(args.config, ROOT),
                threads=args.threads,
                torch=torch.__version__,
                cpu=_cpu_name(),
                date=time.strftime('%Y-%m-%d'),
            )
            with open(args.out, 'a') as file:
                file.write(json.dumps(result) + '\n')
            print(
                f'{height}x{width} batch {batch} with_cp={with_cp}: activations '
                f'{result["activations"] / GIB:.2f} GiB (encoder layer '
                f'{max(result["encoder_layers"]) / GIB:.3f} GiB), forward '
                f'{result["forward_seconds"]} s',
                flush=True,
            )


def time_steps(args: argparse.Namespace) -> None:
    """Median seconds of a training step without and with ``with_cp``, alternating."""
    import statistics

    import torch
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import mmdet_deformdetr  # noqa: F401

    register_all_modules(init_default_scope=True)
    torch.set_num_threads(args.threads)
    cfg = Config.fromfile(args.config)
    height, width, batch = parse_cell(args.cells[0])
    models = {}
    for with_cp in (False, True):
        model_cfg = cfg.model.copy()
        model_cfg.backbone.init_cfg = None
        model_cfg.transformer.with_cp = with_cp
        torch.manual_seed(0)
        models[with_cp] = MODELS.build(model_cfg).train()
    packed = demo_mm_inputs(
        batch_size=batch,
        image_shapes=[(3, height, width)] * batch,
        num_items=[5] * batch,
        num_classes=cfg.model.bbox_head.num_classes,
    )
    data = models[False].data_preprocessor(packed, True)
    seconds = {False: [], True: []}
    for step in range(args.repeat + 1):
        for with_cp, model in models.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            losses = model.loss(data['inputs'], data['data_samples'])
            sum(value for key, value in losses.items() if 'loss' in key).backward()
            if step:  # the first step of each is a warm-up
                seconds[with_cp].append(time.perf_counter() - start)
    plain, checkpointed = (statistics.median(seconds[key]) for key in (False, True))
    print(
        f'{height}x{width} batch {batch}, {args.threads} thread(s), median of {args.repeat}: '
        f'{plain:.2f} s without with_cp, {checkpointed:.2f} s with it '
        f'({checkpointed / plain:.2f}x); {_cpu_name()}, torch {torch.__version__}, '
        f'{time.strftime("%Y-%m-%d")}'
    )


def _cpu_name() -> str:
    from mmdet_deformdetr.analysis.hardware import cpu_name

    return cpu_name()


def load_results(path: str) -> Dict[Tuple[int, int, bool], dict]:
    """(short side, batch, with_cp) -> the last measurement of that cell."""
    results = {}
    with open(path) as file:
        for line in file:
            if line.strip():
                row = json.loads(line)
                results[(row['height'], row['batch'], row['with_cp'])] = row
    return results


def cell(results: dict, height: int, batch: int, with_cp: bool) -> Tuple[float, float, bool]:
    """(activations, peak estimate) in bytes and whether measured, for one cell."""
    measured = results.get((height, batch, with_cp))
    row = measured or results.get((height, 1, with_cp))
    if row is None:
        raise KeyError(f'no measurement at short side {height}, batch 1, with_cp={with_cp}')
    scale = 1 if measured else batch
    activations = row['activations'] * scale
    plain = results.get((height, row['batch'], False))
    recompute = max(plain['encoder_layers']) * scale if with_cp and plain else 0
    state = row['weights'] + row['gradients'] + row['optimizer']
    return activations, state + activations + recompute, measured is not None


def table(args: argparse.Namespace) -> None:
    results = load_results(args.out)
    lines = [
        '| image (short x long) | batch | activations | activations, with_cp | '
        'peak estimate | peak estimate, with_cp |',
        '| --- | --- | --- | --- | --- | --- |',
    ]
    for height, width in SIZES:
        for batch in BATCHES:
            values: List[str] = []
            for with_cp in (False, True):
                try:
                    activations, peak, measured = cell(results, height, batch, with_cp)
                except KeyError:
                    values.append(('n/a', 'n/a'))
                    continue
                mark = '' if measured else '*'
                values.append((f'{activations / GIB:.2f}{mark}', f'{peak / GIB:.2f}{mark}'))
            (act, peak), (act_cp, peak_cp) = values
            lines.append(
                f'| {height} x {width} | {batch} | {act} | {act_cp} | {peak} | {peak_cp} |'
            )
    print('\n'.join(lines))
    print('\nGiB; * derived (batch-1 cell x batch). Measured batch ratios:')
    for (height, batch, with_cp), row in sorted(results.items()):
        single = results.get((height, 1, with_cp))
        if batch > 1 and single:
            ratio = row['activations'] / single['activations']
            print(f'  {height}: batch {batch} / batch 1 = {ratio:.3f} (with_cp={with_cp})')
    for with_cp in (False, True):
        points = sorted(
            (row['height'] * row['width'], row['activations'])
            for (_, batch, cp), row in results.items()
            if batch == 1 and cp == with_cp
        )
        if len(points) >= 3:  # a least-squares line through all but the largest size
            fit = points[:-1]
            mean_x = sum(x for x, _ in fit) / len(fit)
            mean_y = sum(y for _, y in fit) / len(fit)
            slope = sum((x - mean_x) * (y - mean_y) for x, y in fit) / sum(
                (x - mean_x) ** 2 for x, _ in fit
            )
            largest, measured = points[-1]
            predicted = mean_y + slope * (largest - mean_x)
            print(
                f'  batch 1, with_cp={with_cp}: {slope * 1e6 / GIB:.3f} GiB per megapixel '
                f'from {len(fit)} sizes; predicts {predicted / GIB:.2f} GiB at {largest} pixels, '
                f'measured {measured / GIB:.2f} ({predicted / measured:.4f}x)'
            )
    any_row = next(iter(results.values()))
    print(
        f'weights {any_row["weights"] / GIB:.3f} GiB, gradients {any_row["gradients"] / GIB:.3f}'
        f' GiB, AdamW state {any_row["optimizer"] / GIB:.3f} GiB; measured on {any_row["cpu"]}'
        f', {any_row["threads"]} thread(s), torch {any_row["torch"]}, {any_row["date"]}'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('mode', choices=['measure', 'table', 'time'])
    parser.add_argument(
        '--cells', nargs='+', default=['512x768x1', '512x768x2', '800x1200x1', '1333x2000x1']
    )
    parser.add_argument('--with-cp', nargs='+', choices=['off', 'on'], default=['off', 'on'])
    parser.add_argument('--config', default=str(PRIMITIVE))
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', default='work_dirs/memory_table.jsonl')
    parser.add_argument('--repeat', type=int, default=3, help='time: steps of each, after warm-up')
    args = parser.parse_args()
    if args.mode == 'time' and args.cells == parser.get_default('cells'):
        args.cells = ['384x576x1']
    {'measure': measure, 'table': table, 'time': time_steps}[args.mode](args)


if __name__ == '__main__':
    main()
