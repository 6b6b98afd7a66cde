"""Test (and evaluate) a checkpoint with mmengine's Runner.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out RESULTS.pkl] [--show]
                         [--show-dir DIR] [--wait-time S] [--tta] [--cfg-options KEY=VALUE ...]
                         [--launcher {none,pytorch,slurm,mpi}] [--precision fp32|bf16|auto]
                         [--verbose]

The command line is mmdet's ``tools/test.py``. ``--tta`` needs ``tta_model`` and ``tta_pipeline`` in
the config (see ``configs/deformable_detr/*-tta_coco.py``). On CPU-only machines, multi-process
runs (``tools/dist_test.sh``) use gloo and a DDP wrapper that accepts CPU modules (see
``mmdet_deformdetr/engine/``). Any checkpoint format our loader detects works (ours, official,
mmdet zoo, Hugging Face). ``--precision bf16`` runs the test loop under CPU bfloat16 autocast
(mmengine's ``test_cfg.fp16``); ``auto`` picks it where it is native and verified
(``mmdet_deformdetr/engine/inference_precision.py``).
"""

import argparse
import sys
from pathlib import Path

import torch
from mmdet.engine.hooks.utils import trigger_visualization_hook
from mmdet.evaluation import DumpDetResults
from mmdet.utils import setup_cache_size_limit_of_dynamo
from mmengine.config import Config, ConfigDict

# the repository root, for tools.tool_common (run as a script, only tools/ is on sys.path)
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmdet_deformdetr  # noqa: E402,F401  (registers our modules, safe checkpoint loading)
from mmdet_deformdetr import console  # noqa: E402
from mmdet_deformdetr.checkpoint import check_checkpoint_for_testing  # noqa: E402
from mmdet_deformdetr.engine.inference_precision import (  # noqa: E402
    add_precision_argument,
    apply_precision_to_config,
    log_precision,
    resolve_precision,
)
from tools import tool_common  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='MMDet test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', type=str, help='dump predictions to a .pkl file')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='save painted images in work_dir/timestamp/SHOW_DIR')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    add_precision_argument(parser)
    tool_common.add_common_arguments(parser, work_dir_help='the dir to save the evaluation metrics')
    args = tool_common.parse_with_local_rank(parser)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must name a .pkl or .pickle file, got {args.out}')
    return args


def build_cfg(args: argparse.Namespace) -> Config:
    """The config with the command line applied, in mmdet's order of precedence."""
    cfg = tool_common.load_tool_config(args.config, args.launcher, args.cfg_options, args.work_dir)
    cfg.load_from = args.checkpoint
    precision, reason = resolve_precision(
        args.precision, 'cuda' if torch.cuda.is_available() else 'cpu'
    )
    apply_precision_to_config(cfg, precision)
    log_precision(precision, reason)
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
        if missing:
            raise ValueError(
                f'--tta needs {" and ".join(missing)} in the config; see configs/deformable_detr/'
                f'deformable-detr-refine-twostage_x101-64x4d-dconv-c3-c5_16xb2-50e-tta_coco.py'
            )
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    return cfg


def main() -> None:
    args = parse_args()
    console.start_tool(args.verbose)
    # errors the package explains (config, checkpoint, data, downloads): a message, no traceback
    with console.explained_errors('tools/test.py', checkpoint_argument=args.checkpoint) as errors:
        run_test(args, errors)


def run_test(args: argparse.Namespace, errors: console.explained_errors) -> None:
    """Load the config, build the runner, check the checkpoint and test."""
    setup_cache_size_limit_of_dynamo()
    with console.config_errors(args.config):
        cfg = build_cfg(args)
    errors.cfg = cfg  # to name the setting behind a checkpoint that cannot be read
    runner = tool_common.build_runner(cfg)
    # every weight must come from the checkpoint: mmengine only logs heads of another class count
    # ("size mismatch") and would test them at their random initialisation
    check_checkpoint_for_testing(runner.model, args.checkpoint)
    if args.out is not None:
        # a metric that only writes the predictions, as mmdet's tools/test.py
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    main()
