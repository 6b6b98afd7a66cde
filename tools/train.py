"""Train a Deformable DETR (or any mmdet) config with mmengine's Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
                                 [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]
                                 [--verbose]

The command line is mmdet's ``tools/train.py``. Differences, all for CPU-only machines (see
``mmdet_deformdetr/engine/``): ``--amp`` selects bf16 autocast instead of fp16 + loss scaling, and
multi-process runs (``tools/dist_train.sh``) use gloo and a DDP wrapper that accepts CPU modules.
``--resume`` without a checkpoint to resume from is an error (mmengine would start at iteration 0).
One run per work dir, a clear word when ``--resume`` finds the run finished, and exit statuses that
launch scripts act on (75: stopped by a signal after saving, resumable; 74: a checkpoint could not
be written): ``tools/train_guard.py``, ``docs/robustness.md``.
Importing ``mmdet_deformdetr`` also installs the safe checkpoint loading that ``--resume`` and
``load_from`` need on torch >= 2.6.

The terminal shows a short header and the progress (the log file in the work dir keeps the whole
config, environment and hook table); errors with an explanation (config, checkpoint, data, a
failed download) end the run with it instead of a traceback. ``--verbose`` shows everything
(``mmdet_deformdetr/console/``).
"""

import argparse
import sys
from pathlib import Path

from mmdet.utils import setup_cache_size_limit_of_dynamo
from mmengine.config import Config

# the repository root, for tools.tool_common (run as a script, only tools/ is on sys.path)
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmdet_deformdetr  # noqa: E402,F401  (registers our modules, safe checkpoint loading)
from mmdet_deformdetr import console  # noqa: E402
from mmdet_deformdetr.engine import select_amp_optim_wrapper  # noqa: E402
from tools import tool_common, train_guard  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='mixed precision: fp16 with dynamic loss scale on CUDA, bf16 autocast on CPU',
    )
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by (total batch size / auto_scale_lr.base_batch_size)',
    )
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint, or without a path from the latest '
        'checkpoint in the work dir',
    )
    tool_common.add_common_arguments(parser, work_dir_help='the dir to save logs and models')
    return tool_common.parse_with_local_rank(parser)


def build_cfg(args: argparse.Namespace) -> Config:
    """The config with the command line applied, in mmdet's order of precedence."""
    cfg = tool_common.load_tool_config(args.config, args.launcher, args.cfg_options, args.work_dir)
    if args.amp:
        select_amp_optim_wrapper(cfg)
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise RuntimeError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    # a checkpoint given to --resume wins over automatic resumption from the work dir
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main() -> None:
    args = parse_args()
    console.start_tool(args.verbose)
    # errors the package explains (config, checkpoint, data, downloads): a message, no traceback
    with console.explained_errors('tools/train.py') as errors:
        train(args, errors)


def train(args: argparse.Namespace, errors: console.explained_errors) -> None:
    """Load the config, check ``--resume``, build the runner and train."""
    setup_cache_size_limit_of_dynamo()
    with console.config_errors(args.config):
        cfg = build_cfg(args)
    errors.cfg = cfg  # to name the setting behind a checkpoint that cannot be read
    try:
        tool_common.check_resume(cfg)
    except FileNotFoundError as error:  # a usage error: the message, no traceback
        sys.exit(f'tools/train.py: error: {error}')
    sys.exit(train_guard.train(cfg, tool_common.build_runner))


if __name__ == '__main__':
    main()
