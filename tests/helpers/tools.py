"""Run tools/*.py and tools/*.sh as the user would, on the tiny Deformable DETR of
``tiny_deformdetr_coco.py`` (which reads the photographs in ``tests/data/coco_photos``)."""

import os
import socket
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = Path(__file__).resolve().parent / 'tiny_deformdetr_coco.py'
TINY_FINETUNE_CONFIG = Path(__file__).resolve().parent / 'tiny_finetune_custom.py'
COCO_PHOTOS = REPO_ROOT / 'tests' / 'data' / 'coco_photos'
VARIANT_OPTIONS: Dict[str, List[str]] = {
    'plain': [],
    'refine': ['model.with_box_refine=True'],
    'two_stage': ['model.with_box_refine=True', 'model.as_two_stage=True'],
}


def free_port() -> int:
    """A free TCP port for torchrun's rendezvous, so parallel runs on the machine do not clash."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def tool_env(env: Dict[str, str] = None) -> Dict[str, str]:
    """The environment tools run in: one intra-op thread per process (CI machines are small
    shared CPUs), unbuffered output (a killed process's log is complete up to the kill)."""
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', **(env or {}))


def coco_photo_options(root: Path = COCO_PHOTOS) -> List[str]:
    """--cfg-options pointing the tiny configs' dataloaders and evaluators at the photographs
    in ``root`` (tests/data/coco_photos)."""
    ann_file = f'{root}/annotations/instances.json'
    return [
        f'{split}_dataloader.dataset.data_root={root}/' for split in ('train', 'val', 'test')
    ] + [f'val_evaluator.ann_file={ann_file}', f'test_evaluator.ann_file={ann_file}']


def run_tool(
    command: Sequence[str], timeout: float = 240, env: Dict[str, str] = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a tool from the repository root, niced (see ``tool_env``); unless ``check`` is False,
    fail with the output's tail when it exits non-zero. ``result.output``: stdout + stderr."""
    result = subprocess.run(
        ['nice', '-n', '5', *command],
        cwd=REPO_ROOT,
        env=tool_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    if check and result.returncode != 0:
        pytest.fail(f'{" ".join(command)} exited with {result.returncode}:\n{output[-6000:]}')
    result.output = output
    return result


def save_tiny_checkpoint(
    path: Path, variant: str = 'plain', perturb: bool = True, config: Path = TINY_CONFIG
) -> Path:
    """A checkpoint of the tiny model of ``tiny_deformdetr_coco.py`` (80 COCO classes, COCO's
    ``dataset_meta``), saved as mmengine saves one. ``perturb``: weights moved off their zero
    initialisations (``perturb_``, backbone excluded), so that attention weights, offsets and box
    deltas all matter (what parity tests need). ``config``: a config derived from the tiny one
    (the variant's flags are set on top of it)."""
    import torch
    from mmdet.datasets import CocoDataset
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.runner import save_checkpoint

    from tests.helpers.models import VARIANTS, init_weights_quietly, perturb_

    cfg = Config.fromfile(str(config))
    cfg.model.update(VARIANTS[variant])
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    init_weights_quietly(model)
    if perturb:
        perturb_(model)
    save_checkpoint(
        dict(state_dict=model.state_dict(), meta=dict(dataset_meta=dict(CocoDataset.METAINFO))),
        str(path),
    )
    return path
