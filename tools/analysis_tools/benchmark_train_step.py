"""Time a training step (and inference) of ours against mmdet's ``DeformableDETR``, side by side.

Both models are the R-50 paper configs (ours from ``configs/deformable_detr/``, mmdet's from its
shipped ``configs/deformable_detr/``), with the same weights (mmdet's initialisation, converted into
ours), on the same batch of random 800x1216 images with a few boxes, float32 on the CPU. A step is
what mmengine's ``train_step`` does: data preprocessing, forward, losses (Hungarian matching
included), backward, gradient clipping and the optimiser step, each model with its own config's
``optim_wrapper``. Steps alternate between the two models (ABAB...) so that machine load affects
both alike; the medians after ``--warmup`` steps are reported with their ratio, and for our
training step the median share of the losses and, within them, of the Hungarian matching.

    python tools/analysis_tools/benchmark_train_step.py [--variants plain two_stage]
        [--repeat 5] [--warmup 1] [--threads N] [--batch-size 1] [--mode train infer]
"""

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from phase_timer import PhaseTimer

CONFIGS = {
    'plain': 'deformable-detr_r50_16xb2-50e_coco.py',
    'refine': 'deformable-detr-refine_r50_16xb2-50e_coco.py',
    'two_stage': 'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
}
IMAGE_SHAPE = (800, 1216)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--variants', nargs='+', default=['plain', 'two_stage'], choices=sorted(CONFIGS)
    )
    parser.add_argument('--mode', nargs='+', default=['train', 'infer'], choices=['train', 'infer'])
    parser.add_argument('--repeat', type=int, default=5, help='timed steps per model')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps per model first')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--batch-size', type=int, default=1)
    return parser.parse_args()


def build_pair(variant: str):
    """(mmdet model, mmdet optim cfg, our model, our optim cfg) with the same weights."""
    import mmdet
    from mmdet.registry import MODELS
    from mmengine.config import Config

    mmdet_cfg = Config.fromfile(
        str(Path(mmdet.__file__).parent / '.mim' / 'configs' / 'deformable_detr' / CONFIGS[variant])
    )
    from mmdet_deformdetr import configs_root

    our_cfg = Config.fromfile(configs_root() / 'deformable_detr' / CONFIGS[variant])
    for cfg in (mmdet_cfg, our_cfg):
        cfg.model.backbone.init_cfg = None  # no download; the weights are random anyway
    torch.manual_seed(0)
    theirs = MODELS.build(mmdet_cfg.model)
    theirs.init_weights()
    ours = MODELS.build(our_cfg.model)
    ours.load_state_dict(theirs.state_dict())  # our converter, through the load pre-hook
    return theirs, mmdet_cfg.optim_wrapper, ours, our_cfg.optim_wrapper


def make_batch(batch_size: int, seed: int = 0) -> dict:
    """Packed inputs as a dataloader gives them: uint8 images and 5 boxes per image."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    generator = torch.Generator().manual_seed(seed)
    height, width = IMAGE_SHAPE
    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(
            torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
        )
        corners = torch.rand(5, 2, 2, generator=generator) * torch.tensor([width, height])
        boxes = torch.cat([corners.min(1).values, corners.max(1).values + 8], -1)
        sample = DetDataSample(
            metainfo=dict(
                img_shape=IMAGE_SHAPE,
                ori_shape=IMAGE_SHAPE,
                scale_factor=(1.0, 1.0),
                batch_input_shape=IMAGE_SHAPE,
                pad_shape=IMAGE_SHAPE,
            )
        )
        sample.gt_instances = InstanceData(
            bboxes=boxes, labels=torch.randint(80, (5,), generator=generator)
        )
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def step_function(model: torch.nn.Module, optim_cfg, mode: str) -> Callable[[dict], None]:
    from mmengine.optim import build_optim_wrapper

    if mode == 'train':
        model.train()
        optim_wrapper = build_optim_wrapper(model, copy.deepcopy(optim_cfg))
        return lambda batch: model.train_step(copy.deepcopy(batch), optim_wrapper)
    model.eval()
    return lambda batch: model.test_step(copy.deepcopy(batch))


def timing_losses(model: torch.nn.Module, timer: PhaseTimer) -> None:
    """Time our head's losses and, within them, the Hungarian matching (wraps the methods on
    the instance)."""
    head = model.bbox_head
    head.criterion.forward = timer.wrap('losses', head.criterion.forward)
    head.criterion.targets = timer.wrap('matching', head.criterion.targets)


def ending_steps(
    step: Callable[[dict], None], timer: PhaseTimer, steps: List[Dict[str, float]]
) -> Callable[[dict], None]:
    """``step``, then its phases appended to ``steps``."""

    def run(batch: dict) -> None:
        step(batch)
        steps.append(timer.pop())

    return run


def alternate(
    functions: Dict[str, Callable[[dict], None]], batch: dict, repeat: int, warmup: int
) -> Dict[str, List[float]]:
    times: Dict[str, List[float]] = {name: [] for name in functions}
    for index in range(warmup + repeat):
        for name, function in functions.items():
            start = time.perf_counter()
            function(batch)
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    args = parse_args()
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    import mmdet_deformdetr  # noqa: F401  (registers our modules)

    register_all_modules(init_default_scope=False)
    init_default_scope('mmdet')
    MMLogger.get_current_instance().setLevel('WARNING')  # no per-parameter optimiser report
    torch.set_num_threads(args.threads)
    batch = make_batch(args.batch_size)
    print(
        f'R-50, {args.batch_size} x {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}, float32, '
        f'{args.threads} threads, median of {args.repeat} after {args.warmup} warm-up, '
        f'steps alternating between the two models'
    )
    print(f'{"variant":<10} {"mode":<6} {"mmdet (s)":>10} {"ours (s)":>9} {"speed-up":>9}')
    for variant in args.variants:
        theirs, their_optim, ours, our_optim = build_pair(variant)
        loss_timer, loss_steps = PhaseTimer(), []
        timing_losses(ours, loss_timer)
        for mode in args.mode:
            with torch.set_grad_enabled(mode == 'train'):
                times = alternate(
                    {
                        'mmdet': step_function(theirs, their_optim, mode),
                        'ours': ending_steps(
                            step_function(ours, our_optim, mode), loss_timer, loss_steps
                        ),
                    },
                    batch,
                    args.repeat,
                    args.warmup,
                )
            mmdet_s, ours_s = (statistics.median(times[name]) for name in ('mmdet', 'ours'))
            line = (
                f'{variant:<10} {mode:<6} {mmdet_s:>10.2f} {ours_s:>9.2f} {mmdet_s / ours_s:>8.2f}x'
            )
            if mode == 'train':
                timed = loss_steps[-args.repeat :]
                losses = statistics.median(step.get('losses', 0.0) for step in timed)
                matching = statistics.median(step.get('matching', 0.0) for step in timed)
                line += (
                    f'   (ours: losses {losses:.3f} s = {100 * losses / ours_s:.1f} % of the '
                    f'step, of which matching {matching:.3f} s)'
                )
            print(line, flush=True)


if __name__ == '__main__':
    main()
