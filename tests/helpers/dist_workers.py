"""Functions run in processes the tests start (``torch.multiprocessing`` spawn, ``python -c``):
importable from the repository root and light to import (torch and the engine's process-group
helper, loaded without the package)."""

import os
import time
from pathlib import Path
from typing import Any


def all_reduce_with_a_stuck_peer(rank: int, port: int, timeout_s: float, results: Any) -> None:
    """Rank 0 all-reduces while rank 1, in the group, never joins the collective (a stuck rank
    torchrun cannot see). Rank 0 puts (exception name, message, seconds it blocked) in
    ``results``."""
    import torch
    import torch.distributed as dist

    join_gloo_group(rank, port, 2, timeout_s)
    if rank == 1:
        time.sleep(timeout_s * 3)
        return
    start = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1))
        results.put(('returned', '', time.monotonic() - start))
    except Exception as error:  # what the stuck collective raises is the point of the test
        results.put((type(error).__name__, str(error), time.monotonic() - start))


def load_cpu_dist() -> Any:
    """``mmdet_deformdetr/engine/cpu_dist.py`` loaded alone, not through the package (whose import
    of mmdet takes seconds per process)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / 'mmdet_deformdetr' / 'engine' / 'cpu_dist.py'
    spec = importlib.util.spec_from_file_location('cpu_dist', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def join_gloo_group(rank: int, port: int, world_size: int, timeout_s: float) -> None:
    """Set the variables torchrun would set (on 127.0.0.1:``port``) and join the group through
    ``cpu_dist._init_process_group``, as the tools do."""
    os.environ.update(
        MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    load_cpu_dist()._init_process_group(dict(backend='gloo', timeout=timeout_s))


def collectives_then_exit(rank: int, port: int, world_size: int) -> None:
    """Join a gloo group through ``_init_process_group``, run a few collectives (tensors and a
    pickled object, as a test loop's result collection does) and return without destroying the
    group: what ``tools/test.py`` does when ``runner.test()`` returns."""
    import torch
    import torch.distributed as dist

    join_gloo_group(rank, port, world_size, 60)
    for _ in range(5):
        gathered = [torch.zeros(1000) for _ in range(world_size)]
        dist.all_gather(gathered, torch.full((1000,), float(rank)))
        dist.all_reduce(torch.ones(10))
        dist.barrier()
    dist.all_gather_object([None] * world_size, {'rank': rank})
