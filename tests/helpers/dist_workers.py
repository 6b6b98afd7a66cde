"""Functions run in processes started by ``torch.multiprocessing`` (spawn) in the tests: importable
from the repository root and light to import (torch and the engine's process-group helper)."""

import os
import time
from typing import Any


def all_reduce_with_a_stuck_peer(rank: int, port: int, timeout_s: float, results: Any) -> None:
    """Rank 0 all-reduces while rank 1, in the group, never joins the collective (a stuck rank
    torchrun cannot see). Rank 0 puts (exception name, message, seconds it blocked) in
    ``results``."""
    import torch
    import torch.distributed as dist

    from mmdet_deformdetr.engine.cpu_dist import _init_process_group

    os.environ.update(
        MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE='2'
    )
    _init_process_group(dict(backend='gloo', timeout=timeout_s))
    if rank == 1:
        time.sleep(timeout_s * 3)
        return
    start = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1))
        results.put(('returned', '', time.monotonic() - start))
    except Exception as error:  # what the stuck collective raises is the point of the test
        results.put((type(error).__name__, str(error), time.monotonic() - start))
