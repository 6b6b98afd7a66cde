"""mmdet's own analysis tools, as shipped in mmdet/.mim/tools/analysis_tools, run on our tiny
config and the photographs (the `analysis` extra brings what they import: seaborn, psutil);
and our benchmark_fps.py, which measures where mmdet's benchmark.py cannot (CPU)."""

import re
import sys
from pathlib import Path
from typing import List

import pytest

from tests.helpers.tools import COCO_PHOTOS, TINY_CONFIG, run_tool, save_tiny_checkpoint

MMDET_TOOLS = Path(__import__('mmdet').__file__).parent / '.mim' / 'tools'
ANALYSIS = MMDET_TOOLS / 'analysis_tools'

pytestmark = pytest.mark.slow


def data_options() -> List[str]:
    root, ann_file = f'{COCO_PHOTOS}/', f'{COCO_PHOTOS}/annotations/instances.json'
    return [
        f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')
    ] + [f'val_evaluator.ann_file={ann_file}', f'test_evaluator.ann_file={ann_file}']


def mmdet_tool(name: str, *args: str) -> str:
    return run_tool([sys.executable, str(ANALYSIS / name), *args]).output


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp('tiny') / 'tiny.pth')


def test_get_flops_agrees_with_ours(our_get_flops):
    """mmdet's get_flops.py runs, and reports what ours says mmdet's would (ours adds the
    fifth multiply-add per sampled value that mmdet's grid_sampler handle leaves out)."""
    theirs = mmdet_tool(
        'get_flops.py', str(TINY_CONFIG), '--num-images', '2', '--cfg-options', *data_options()
    )
    flops = float(re.search(r'Flops: ([\d.]+)G', theirs).group(1))
    ours, report = our_get_flops
    params = float(re.search(r'Params: ([\d.]+)M', theirs).group(1))
    # the same two images; mmdet prints 3 decimals
    assert flops == pytest.approx(report['mmdet_get_flops_gflops'], abs=5e-4)
    assert report['gflops'] > report['mmdet_get_flops_gflops']
    assert f'params: {params:.2f} M' in ours


def test_benchmark_dataloader_and_dataset():
    """benchmark.py needs psutil (the analysis extra) for every task; --task inference moves
    the model to CUDA unconditionally, so on CPU use tools/analysis_tools/benchmark_fps.py."""
    for task in ('dataloader', 'dataset'):
        output = run_tool(
            [
                sys.executable,
                str(ANALYSIS / 'benchmark.py'),
                str(TINY_CONFIG),
                '--task',
                task,
                '--max-iter',
                '3',
                '--num-warmup',
                '1',
                '--cfg-options',
                *data_options(),
            ]
        ).output
        assert 'Overall fps' in output


def test_our_benchmark_fps_names_the_device(checkpoint):
    output = run_tool(
        [
            sys.executable,
            'tools/analysis_tools/benchmark_fps.py',
            str(TINY_CONFIG),
            str(checkpoint),
            '--device',
            'cpu',
            '--num-images',
            '3',
            '--warmup',
            '1',
            '--threads',
            '1',
            '--data-root',
            f'{COCO_PHOTOS}/',
        ]
    ).output
    assert re.search(r'on .+, 1 torch threads', output)
    fps = float(re.search(r'FPS: ([\d.]+)', output).group(1))
    assert fps > 0
    assert '3 images (after 1 warm-up), batch 1' in output


def test_browse_dataset_writes_every_image(tmp_path):
    mmdet_tool(
        'browse_dataset.py',
        str(TINY_CONFIG),
        '--output-dir',
        str(tmp_path),
        '--not-show',
        '--cfg-options',
        *data_options(),
    )
    drawn = sorted(p.name for p in tmp_path.iterdir())
    assert drawn == sorted(p.name for p in (COCO_PHOTOS / 'images').glob('*.jpg'))


def test_analyze_logs_and_confusion_matrix_after_train_and_test(checkpoint, tmp_path):
    """Train two iterations (the log analyze_logs.py reads), test with --out (the predictions
    confusion_matrix.py reads), then run both tools."""
    run_tool(
        [
            sys.executable,
            'tools/train.py',
            str(TINY_CONFIG),
            '--work-dir',
            str(tmp_path / 'train'),
            '--cfg-options',
            *data_options(),
        ]
    )
    log = next(
        p for p in (tmp_path / 'train').glob('*/vis_data/*.json') if p.name != 'scalars.json'
    )
    curve = tmp_path / 'loss.png'
    mmdet_tool('analyze_logs.py', 'plot_curve', str(log), '--keys', 'loss', '--out', str(curve))
    assert curve.stat().st_size > 0
    timing = mmdet_tool('analyze_logs.py', 'cal_train_time', str(log))
    assert 'average iter time' in timing

    results = tmp_path / 'results.pkl'
    run_tool(
        [
            sys.executable,
            'tools/test.py',
            str(TINY_CONFIG),
            str(checkpoint),
            '--out',
            str(results),
            '--work-dir',
            str(tmp_path / 'test'),
            '--cfg-options',
            *data_options(),
        ]
    )
    mmdet_tool(
        'confusion_matrix.py',
        str(TINY_CONFIG),
        str(results),
        str(tmp_path / 'cm'),
        '--cfg-options',
        *data_options(),
    )
    assert (tmp_path / 'cm' / 'confusion_matrix.png').stat().st_size > 0


def test_analyze_logs_plots_map_of_an_iteration_based_run(tmp_path):
    """An iteration-based run that validates twice (as the demo does, five times), logged with
    ValRoundLogProcessor (the demo config's): plot_curve --keys bbox_mAP draws one point per
    evaluation. The key is the part after 'coco/' (analyze_logs.py drops the prefix when it
    reads the log); without the processor every evaluation falls in one group and the plot
    fails."""
    import importlib.util

    run_tool(
        [
            sys.executable,
            'tools/train.py',
            str(TINY_CONFIG),
            '--work-dir',
            str(tmp_path / 'train'),
            '--cfg-options',
            *data_options(),
            'train_cfg.val_begin=1',
            'train_cfg.val_interval=1',
            'log_processor.type=ValRoundLogProcessor',
        ]
    )
    log = next(
        p for p in (tmp_path / 'train').glob('*/vis_data/*.json') if p.name != 'scalars.json'
    )
    curve = tmp_path / 'map.png'
    output = mmdet_tool(
        'analyze_logs.py', 'plot_curve', str(log), '--keys', 'bbox_mAP', '--out', str(curve)
    )
    assert f'save curve to: {curve}' in output and curve.stat().st_size > 0
    assert 'average iter time' in mmdet_tool('analyze_logs.py', 'cal_train_time', str(log))

    spec = importlib.util.spec_from_file_location('analyze_logs', ANALYSIS / 'analyze_logs.py')
    analyze_logs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(analyze_logs)
    groups = analyze_logs.load_json_logs([str(log)])[0]
    assert {round: len(values['bbox_mAP']) for round, values in groups.items()} == {1: 1, 2: 1}
    # every training line is still read (the loss curve's x axis is the iteration)
    assert sorted(step for values in groups.values() for step in values['step']) == [1, 2]
