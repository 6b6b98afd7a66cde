"""Benchmark our C++ CPU multi-scale deformable attention against mmcv's PyTorch fallback.

Shapes are those of one 800x1216 image in Deformable DETR: 4 levels with strides 8/16/32/64, i.e.
(100, 152), (50, 76), (25, 38), (13, 19) = 20197 keys; M = 8 heads of D = 32 channels, K = 4 points.
"encoder": every key is a query (20197 queries); "decoder": 300 queries.

Reported per shape, both paths side by side in one run:
  * forward time (under no_grad) and forward + backward time: median over --repeat runs after
    --warmup runs, in milliseconds, with the speed-up of ours over mmcv's;
  * the largest difference between the two paths in float32: absolute for the output; relative to
    the largest magnitude of mmcv's result for the gradients (the location gradient is ~1e3 in size
    and jumps where a point crosses a pixel edge, so float32 rounding of x * W moves it visibly);
  * peak memory: each (shape, path, pass) runs once more in a fresh subprocess, which records its
    resident set (VmRSS) just before the call, resets the kernel's high-water mark
    (/proc/self/clear_refs) and reads VmHWM after it. The difference is the extra physical memory
    the call touched at its peak: temporaries, outputs and gradients, not the inputs. The child runs
    with MALLOC_MMAP_THRESHOLD_=65536 so that glibc returns every large freed block to the system at
    once; otherwise memory freed by the warm-up call stays resident and hides the next call's peak.

    python tools/analysis_tools/benchmark_msda.py [--repeat 5] [--threads N] [--no-memory]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

LEVEL_SHAPES = [(100, 152), (50, 76), (25, 38), (13, 19)]
NUM_HEADS, HEAD_DIMS, NUM_POINTS = 8, 32, 4
NUM_DECODER_QUERIES = 300
PATHS = ('ours', 'mmcv')
PASSES = ('forward', 'forward+backward')


def make_inputs(shape_name: str, seed: int = 0) -> Tuple[Tensor, ...]:
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights (float32).

    Locations look like a trained model's: a reference point (encoder: the query's own pixel centre;
    decoder: random) plus offsets of a few pixels of each level.
    """
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(LEVEL_SHAPES)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    num_keys, num_levels = int(sizes.sum()), len(LEVEL_SHAPES)
    if shape_name == 'encoder':
        centres = []
        for height, width in LEVEL_SHAPES:
            ys, xs = torch.meshgrid(
                (torch.arange(height) + 0.5) / height,
                (torch.arange(width) + 0.5) / width,
                indexing='ij',
            )
            centres.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
        reference = torch.cat(centres)  # (num_keys, 2)
    else:
        reference = torch.rand(NUM_DECODER_QUERIES, 2, generator=generator)
    num_queries = reference.shape[0]
    pixel_offsets = (
        torch.randn(1, num_queries, NUM_HEADS, num_levels, NUM_POINTS, 2, generator=generator) * 3
    )
    normaliser = spatial_shapes.flip(-1).float()[None, None, None, :, None, :]
    locations = reference[None, :, None, None, None, :] + pixel_offsets / normaliser
    weights = (
        torch.randn(1, num_queries, NUM_HEADS, num_levels * NUM_POINTS, generator=generator)
        .softmax(-1)
        .view(1, num_queries, NUM_HEADS, num_levels, NUM_POINTS)
    )
    value = torch.randn(1, num_keys, NUM_HEADS, HEAD_DIMS, generator=generator)
    return value, spatial_shapes, level_start_index, locations, weights


def make_path(path: str) -> Callable[..., Tensor]:
    """(value, spatial_shapes, level_start_index, locations, weights) -> (1, nq, M * D)."""
    if path == 'ours':
        from mmdet_deformdetr.ops import multi_scale_deformable_attn
        from mmdet_deformdetr.ops.cpu_kernel import load_cpu_extension

        if load_cpu_extension() is None:
            sys.exit('our C++ kernel could not be built; nothing to benchmark')
        return lambda v, s, i, loc, w: multi_scale_deformable_attn(v, s, i, loc, w, impl='cpu')
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

    return lambda v, s, i, loc, w: multi_scale_deformable_attn_pytorch(v, s, loc, w)


def run_once(
    fn: Callable[..., Tensor], inputs: Tuple[Tensor, ...], pass_name: str, upstream: Tensor
) -> List[Tensor]:
    """One call; returns the output, plus the three gradients for forward+backward."""
    value, spatial_shapes, level_start_index, locations, weights = inputs
    if pass_name == 'forward':
        with torch.no_grad():
            return [fn(value, spatial_shapes, level_start_index, locations, weights)]
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    output = fn(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
    output.backward(upstream)
    return [output.detach()] + [leaf.grad for leaf in leaves]


def time_ms(
    fn: Callable[..., Tensor],
    inputs: Tuple[Tensor, ...],
    pass_name: str,
    upstream: Tensor,
    warmup: int,
    repeat: int,
) -> float:
    for _ in range(warmup):
        run_once(fn, inputs, pass_name, upstream)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run_once(fn, inputs, pass_name, upstream)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _status_kib(field: str) -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def measure_memory_here(shape_name: str, path: str, pass_name: str) -> None:
    """Subprocess body: print the peak extra resident memory (MiB) of one call as JSON."""
    fn = make_path(path)
    inputs = make_inputs(shape_name)
    upstream = torch.randn(1, inputs[3].shape[1], NUM_HEADS * HEAD_DIMS)
    run_once(fn, inputs, pass_name, upstream)  # lazy initialisation outside the measurement
    baseline = _status_kib('VmRSS')
    Path('/proc/self/clear_refs').write_text('5')  # 5: reset the peak-RSS counter (VmHWM)
    run_once(fn, inputs, pass_name, upstream)
    print(json.dumps({'peak_mib': (_status_kib('VmHWM') - baseline) / 1024}))


def measure_memory(shape_name: str, path: str, pass_name: str, threads: int) -> float:
    command = [
        sys.executable,
        __file__,
        '--memory-child',
        shape_name,
        path,
        pass_name,
        '--threads',
        str(threads),
    ]
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if result.returncode != 0:
        print(
            f'memory measurement failed for {shape_name}/{path}/{pass_name}:\n{result.stderr}',
            file=sys.stderr,
        )
        return float('nan')
    return json.loads(result.stdout.strip().splitlines()[-1])['peak_mib']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeat', type=int, default=5, help='timed runs (median reported)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs first')
    parser.add_argument(
        '--threads',
        type=int,
        default=torch.get_num_threads(),
        help='torch.set_num_threads (default: torch default)',
    )
    parser.add_argument(
        '--shapes', nargs='+', default=['encoder', 'decoder'], choices=['encoder', 'decoder']
    )
    parser.add_argument('--no-memory', action='store_true', help='skip the memory subprocesses')
    parser.add_argument(
        '--memory-child', nargs=3, metavar=('SHAPE', 'PATH', 'PASS'), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        measure_memory_here(*args.memory_child)
        return

    functions = {path: make_path(path) for path in PATHS}
    print(
        f'torch {torch.__version__}, {torch.get_num_threads()} threads, float32, batch 1, '
        f'levels {LEVEL_SHAPES}, M={NUM_HEADS} D={HEAD_DIMS} K={NUM_POINTS}; '
        f'median of {args.repeat} runs'
    )
    header = (
        f'{"shape":8} {"pass":17} {"ours ms":>9} {"mmcv ms":>9} {"speed-up":>8} '
        f'{"|diff| out":>10} {"rel. d value, d loc, d weight":>30}'
    )
    if not args.no_memory:
        header += f' {"peak MiB ours":>13} {"mmcv":>7}'
    print(header)
    for shape_name in args.shapes:
        inputs = make_inputs(shape_name)
        upstream = torch.randn(
            1, inputs[3].shape[1], NUM_HEADS * HEAD_DIMS, generator=torch.Generator().manual_seed(1)
        )
        for pass_name in PASSES:
            times: Dict[str, float] = {}
            results: Dict[str, List[Tensor]] = {}
            for path, fn in functions.items():
                times[path] = time_ms(fn, inputs, pass_name, upstream, args.warmup, args.repeat)
                results[path] = run_once(fn, inputs, pass_name, upstream)
            pairs = list(zip(results['ours'], results['mmcv']))
            output_diff = (pairs[0][0] - pairs[0][1]).abs().max().item()
            grad_diffs = ', '.join(
                f'{((a - b).abs().max() / b.abs().max()).item():.1e}' for a, b in pairs[1:]
            )
            line = (
                f'{shape_name:8} {pass_name:17} {times["ours"]:9.1f} {times["mmcv"]:9.1f} '
                f'{times["mmcv"] / times["ours"]:7.1f}x {output_diff:10.1e} {grad_diffs:>30}'
            )
            if not args.no_memory:
                peaks = [
                    measure_memory(shape_name, path, pass_name, args.threads) for path in PATHS
                ]
                line += f' {peaks[0]:13.1f} {peaks[1]:7.1f}'
            print(line, flush=True)


if __name__ == '__main__':
    main()
