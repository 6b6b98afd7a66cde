"""What ``tools/train.py`` and ``tools/test.py`` share: the common command-line arguments, the
config they load from it, the check of ``--resume`` and building the runner.

It lives with the tools, not in the plugin: ``import mmdet_deformdetr`` carries what configs name
and what users import, and this is command-line code. The scripts import it as ``tools.tool_common``
(each puts the repository root on ``sys.path`` first, since ``python tools/train.py`` only puts
``tools/`` there); tests import it the same way.
"""

import argparse
import glob
import os
import os.path as osp
from typing import Optional

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmdet_deformdetr import find_config
from mmdet_deformdetr.checkpoint import find_resume_checkpoint
from mmdet_deformdetr.engine import configure_cpu_distributed
from mmdet_deformdetr.engine.atomic_checkpoint import last_checkpoint_of


def add_common_arguments(parser: argparse.ArgumentParser, work_dir_help: str) -> None:
    """``--work-dir``, ``--cfg-options``, ``--launcher`` and ``--local_rank`` as mmdet's tools
    define them."""
    parser.add_argument('--work-dir', help=work_dir_help)
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value (nested keys with dots, lists '
        'as key="[a,b]", no spaces)',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher',
    )
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_with_local_rank(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line; ``LOCAL_RANK`` comes from ``--local_rank`` unless the launcher
    (torchrun) has set it, as in mmdet's tools."""
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_tool_config(
    config: str, launcher: str, cfg_options: Optional[dict], work_dir: Optional[str]
) -> Config:
    """Load ``config`` and apply the common command line, in mmdet's order of precedence.

    ``config`` is a file, or the name of a shipped config (``mmdet_deformdetr.find_config``).
    ``cfg_options`` are merged over the file; the work dir is the command line's, else the
    config's, else ``./work_dirs/<config name>``.
    """
    cfg = Config.fromfile(find_config(config))
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


def _is_local(path: str) -> bool:
    return '://' not in path  # s3://, http://, deformdetr:// ... are checked by their loaders


def _checkpoints_in(work_dir: str) -> str:
    found = sorted(glob.glob(osp.join(work_dir, '*.pth')), key=osp.getmtime)
    names = [osp.basename(path) for path in found[-5:]]
    return ', '.join(names) if names else 'none'


def check_resume(cfg: Config) -> None:
    """Fail clearly when ``--resume`` has nothing to resume from.

    mmengine resumes from ``work_dir/last_checkpoint`` when ``cfg.load_from`` is None and, when
    that file is missing, only logs 'Did not find last_checkpoint to be resumed.' and trains from
    iteration 0; a missing ``--resume PATH`` fails late, after the model is built. Without a path,
    ``mmdet_deformdetr.checkpoint.find_resume_checkpoint`` finds the checkpoint (or raises); a
    name relative to the work dir in ``last_checkpoint`` becomes ``cfg.load_from``.

    Raises:
        FileNotFoundError: naming the work dir, what was looked for and what to do.
    """
    if not cfg.get('resume', False):
        return
    path = cfg.get('load_from')
    if path is None:
        found = find_resume_checkpoint(cfg.work_dir)
        if found != last_checkpoint_of(cfg.work_dir):
            cfg.load_from = found
    elif _is_local(path) and not osp.isfile(path):
        raise FileNotFoundError(
            f'--resume {path}: no such checkpoint file. Checkpoints in the work dir '
            f'{cfg.work_dir}: {_checkpoints_in(cfg.work_dir)}; pass one of them, or --resume '
            f'alone for the latest.'
        )


def build_runner(cfg: Config) -> Runner:
    """The runner of ``cfg`` (``runner_type`` when set), after the CPU multi-process fixes."""
    configure_cpu_distributed(cfg)
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
