"""tools/demo.py: the schedule / dataset rewiring (fast) and the whole demo end to end in a tiny
mode (generation, a few training iterations, CocoMetric, both PNGs)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / 'configs' / 'demo' / 'deformable-detr-refine-twostage_r18_shapes.py'


def _demo_module():
    spec = importlib.util.spec_from_file_location('demo_tool', ROOT / 'tools' / 'demo.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_set_schedule_rewrites_every_iteration_count():
    from mmengine.config import Config

    demo = _demo_module()
    cfg = Config.fromfile(CONFIG)
    demo.set_schedule(cfg, iters=300, num_evals=3)
    assert cfg.train_cfg.max_iters == 300 and cfg.train_cfg.val_interval == 100
    warmup, cosine = cfg.param_scheduler
    assert warmup.end == cosine.begin == 60  # warm-up capped at a fifth of a short run
    assert cosine.end == 300 and cosine.T_max == 240
    # a checkpoint at every evaluation, not only at the end
    assert cfg.default_hooks.checkpoint.interval == 100
    assert cfg.default_hooks.checkpoint.save_last
    demo.set_schedule(cfg, iters=1650, num_evals=5)
    assert cfg.param_scheduler[0].end == cfg.warmup_iters == 300  # the config's, uncapped


def test_evaluations_during_training_use_a_val_subset(tmp_path):
    from mmengine.config import Config

    demo = _demo_module()
    (tmp_path / 'annotations').mkdir()
    images = [dict(id=i, file_name=f'{i}.png', width=8, height=8) for i in range(5)]
    annotations = [
        dict(id=10 + i, image_id=i % 5, category_id=1, bbox=[0, 0, 4, 4], area=16, iscrowd=0)
        for i in range(10)
    ]
    (tmp_path / 'annotations' / 'instances_val.json').write_text(
        json.dumps(
            dict(images=images, annotations=annotations, categories=[dict(id=1, name='circle')])
        )
    )
    cfg = Config.fromfile(CONFIG)
    cfg.val_dataloader.dataset.data_root = f'{tmp_path}/'
    demo.sync_dependent_keys(cfg, val_subset=2)
    subset = json.loads(Path(cfg.val_evaluator.ann_file).read_text())
    assert [image['id'] for image in subset['images']] == [0, 1]
    assert sorted(a['image_id'] for a in subset['annotations']) == [0, 0, 1, 1]
    assert cfg.val_dataloader.dataset.ann_file == 'annotations/instances_val_first2.json'
    # the final evaluation reads the whole split
    assert cfg.test_dataloader.dataset.ann_file == 'annotations/instances_val.json'
    assert cfg.test_evaluator.ann_file == f'{tmp_path}/annotations/instances_val.json'


def test_train_py_on_the_demo_config_does_not_use_the_demos_folder():
    """tools/demo.py passes its work dir; the config names none, so tools/train.py uses mmdet's
    default, work_dirs/<config name>/, and a plain --resume cannot pick up the demo's run."""
    from mmengine.config import Config

    from tools.tool_common import load_tool_config

    assert Config.fromfile(CONFIG).get('work_dir') is None
    cfg = load_tool_config(str(CONFIG), 'none', None, None)
    assert cfg.work_dir == f'./work_dirs/{CONFIG.stem}'


def test_paths_on_the_command_line_are_relative_to_where_the_demo_starts(tmp_path, monkeypatch):
    demo = _demo_module()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'argv', ['demo.py', '--work-dir', 'mine', '--data-root', 'd/'])
    args = demo.parse_args()
    assert args.work_dir == str(tmp_path / 'mine')
    assert args.data_root == f'{tmp_path}/d/'
    assert args.data_cache == str(ROOT / 'data')  # defaults: the repository's
    monkeypatch.setattr(sys, 'argv', ['demo.py'])
    assert demo.parse_args().work_dir == str(ROOT / 'work_dirs' / 'demo')


def test_other_coco_dataset_through_cfg_options():
    """The documented --cfg-options keys suffice: evaluator, test loader, num_classes follow."""
    from mmengine.config import Config

    demo = _demo_module()
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict(
        {
            'val_dataloader.dataset.data_root': 'data/mine/',
            'val_dataloader.dataset.ann_file': 'ann/val.json',
            'train_dataloader.dataset.metainfo.classes': ['cat', 'dog'],
        }
    )
    demo.sync_dependent_keys(cfg)
    assert cfg.val_evaluator.ann_file == 'data/mine/ann/val.json'
    assert cfg.test_dataloader.dataset.ann_file == 'ann/val.json'
    assert cfg.model.bbox_head.num_classes == 2


def test_plot_training_curves_from_scalars(tmp_path):
    from tools.shapes_demo import plot_training_curves

    rows = [dict(step=i, loss=10.0 / i, loss_cls=1.0 / i, lr=1e-4) for i in range(10, 101, 10)]
    rows += [{'step': 50, 'coco/bbox_mAP': 0.2}, {'step': 100, 'coco/bbox_mAP': 0.4}]
    scalars = tmp_path / 'scalars.json'
    scalars.write_text('\n'.join(json.dumps(r) for r in rows))
    out = plot_training_curves(scalars, tmp_path / 'curves.png')
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_thread_count_tuner_keeps_the_faster_count(monkeypatch):
    """Iterations are 'slow' at 2 threads and 'fast' at 1: the tuner switches to 1 and stays."""
    import types

    import torch

    from tools.shapes_demo import ThreadCountTuner
    from tools.shapes_demo import threads as threads_module

    clock = [0.0]
    monkeypatch.setattr(threads_module.time, 'perf_counter', lambda: clock[0])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        tuner = ThreadCountTuner(max_threads=2, period=10, trial=4)
        runner = types.SimpleNamespace(iter=0, logger=types.SimpleNamespace(info=print))
        for i in range(36):  # ends after the third trial, before the fourth begins
            runner.iter = i
            tuner.before_train_iter(runner, i)
            clock[0] += 1.0 if torch.get_num_threads() == 1 else 3.0
            tuner.after_train_iter(runner, i)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.timeout(540)  # the demo, then tools/test.py on its saved config
def test_demo_end_to_end_tiny(tmp_path):
    """A few iterations on a few generated images: every artefact is written."""
    work_dir = tmp_path / 'work'
    cmd = [
        sys.executable,
        str(ROOT / 'tools' / 'demo.py'),
        '--iters',
        '4',
        '--num-evals',
        '1',
        '--num-train',
        '8',
        '--num-val',
        '4',
        '--num-vis',
        '2',
        '--data-cache',
        str(tmp_path / 'data'),
        '--work-dir',
        str(work_dir),
        '--cfg-options',
        'train_dataloader.batch_size=2',
        'val_dataloader.batch_size=2',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False',
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'Iter(train)' in result.stdout + result.stderr  # mmengine's progress log is visible
    assert (tmp_path / 'data' / 'shapes_seed0_8x4' / 'dataset_meta.json').is_file()
    summary = json.loads((work_dir / 'summary.json').read_text())
    assert Path(summary['checkpoint']).is_file()
    assert summary['checkpoint'].endswith('iter_4.pth')
    assert [row['iter'] for row in summary['val_subset_history']] == [4]
    assert set(summary['seconds']) == {'data', 'train', 'final_eval', 'total'}
    assert '[demo] precision: ' in result.stdout and summary['precision'] in ('bf16', 'fp32')
    table = (work_dir / 'coco_bbox.txt').read_text()
    assert 'Average Precision' in table or '(no detections)' in table
    metrics = json.loads((work_dir / 'metrics.json').read_text())
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0
    for png in ('predictions.png', 'training_curves.png'):
        assert (work_dir / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', png
    # the final detections went to the work dir, but the saved config does not send another
    # run's there: tools/test.py with the saved config and another work dir writes only there
    detections = work_dir / 'val_detections.bbox.json'
    assert detections.is_file()
    saved_config = work_dir / CONFIG.name
    assert 'outfile_prefix' not in saved_config.read_text()
    before = {path: path.stat().st_mtime_ns for path in work_dir.rglob('*')}
    other = tmp_path / 'other'
    test_run = subprocess.run(
        [
            sys.executable,
            str(ROOT / 'tools' / 'test.py'),
            str(saved_config),
            summary['checkpoint'],
            '--work-dir',
            str(other),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert test_run.returncode == 0, test_run.stdout[-3000:] + test_run.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in work_dir.rglob('*')} == before
    assert list(other.glob('*/*.json'))  # the metrics of the test run, in its own work dir


def test_precision_follows_native_bf16_and_the_flag():
    from mmengine.config import Config

    from tools.shapes_demo import choose_precision

    def cfg():
        return Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='AdamW'))))

    native = (True, '/proc/cpuinfo lists amx_bf16')
    emulated = (False, '/proc/cpuinfo lists none of ...')
    c = cfg()
    assert choose_precision(c, 'auto', native)[0] == 'bf16'
    assert c.optim_wrapper.type == 'CPUAutocastOptimWrapper'
    c = cfg()
    choice, reason = choose_precision(c, 'auto', emulated)
    assert choice == 'fp32' and 'no native bfloat16' in reason
    assert c.optim_wrapper.type == 'OptimWrapper'
    c = cfg()
    assert choose_precision(c, 'auto', (None, 'no /proc/cpuinfo'))[0] == 'fp32'
    c = cfg()
    assert choose_precision(c, 'bf16', emulated)[0] == 'bf16'
    assert c.optim_wrapper.type == 'CPUAutocastOptimWrapper'
    assert choose_precision(c, 'fp32', native)[0] == 'fp32'
    assert c.optim_wrapper.type == 'OptimWrapper'
    with pytest.raises(ValueError, match='precision must be one of'):
        choose_precision(cfg(), 'fp16')
