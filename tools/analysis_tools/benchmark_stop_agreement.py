"""Cost of ``PreemptionHook``'s per-iteration agreement: one all-reduce (max) of one integer over
all ranks, on gloo (CPU) processes of this machine.

    python tools/analysis_tools/benchmark_stop_agreement.py [--ranks 2] [--calls 2000]

Each rank calls ``PreemptionHook._agreed(False)`` (what the hook does after every training
iteration) ``--calls`` times after a warm-up; rank 0 prints the median and 90th percentile per
call in microseconds. Set against the duration of a training iteration (``docs/performance.md``),
this is the overhead of the hook on multi-process runs; single-process runs make no call.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def rank_main(rank: int, world_size: int, port: int, calls: int, results) -> None:
    os.environ.update(
        MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    import torch
    import torch.distributed as dist

    from mmdet_deformdetr.engine.preemption import PreemptionHook

    torch.set_num_threads(1)
    dist.init_process_group('gloo')
    for _ in range(100):  # warm-up: connections, allocator
        PreemptionHook._agreed(False)
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        PreemptionHook._agreed(False)
        seconds.append(time.perf_counter() - start)
    if rank == 0:
        seconds.sort()
        results.put((statistics.median(seconds), seconds[int(0.9 * len(seconds))]))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--ranks', type=int, default=2)
    parser.add_argument('--calls', type=int, default=2000)
    args = parser.parse_args()

    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    context = mp.get_context('spawn')
    results = context.Queue()
    processes = [
        context.Process(target=rank_main, args=(rank, args.ranks, port, args.calls, results))
        for rank in range(args.ranks)
    ]
    for process in processes:
        process.start()
    median, p90 = results.get(timeout=600)
    for process in processes:
        process.join()
    print(
        f'all-reduce (max) of one int32 over {args.ranks} gloo ranks, {args.calls} calls: '
        f'median {median * 1e6:.0f} us, 90th percentile {p90 * 1e6:.0f} us per iteration'
    )


if __name__ == '__main__':
    main()
