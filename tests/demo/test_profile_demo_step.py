"""tools/analysis_tools/profile_demo_step.py: the demo's training step split into phases, on real
batches of a small generated shapes dataset."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / 'tools' / 'analysis_tools' / 'profile_demo_step.py'


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_phases_add_up_to_the_iteration(tmp_path):
    from mmdet_deformdetr.datasets import ShapesConfig, generate_shapes_dataset

    data_root = tmp_path / 'shapes'
    generate_shapes_dataset(str(data_root), ShapesConfig(seed=3, num_train=6, num_val=2))
    cmd = [
        sys.executable,
        str(SCRIPT),
        '--data-root',
        f'{data_root}/',
        '--precision',
        'fp32',
        '--repeat',
        '2',
        '--warmup',
        '1',
        '--torch-profile',
        '1',
        '--cfg-options',
        'train_dataloader.batch_size=2',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
    ]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    total = float(re.search(r'fp32, \d+ threads, batch 2: median (\d+) ms', out).group(1))
    phases = {
        name: float(ms)
        for name, ms in re.findall(r'^  (\S+)\s+(-?[\d.]+) ms\s+[\d.]+ %$', out, re.MULTILINE)
    }
    assert set(phases) == {
        'data',
        'preprocess',
        'backbone+neck',
        'transformer',
        'head',
        'matching',
        'losses',
        'backward',
        'optimizer',
    }
    # every phase ran (the matching is timed inside the losses, not counted twice)
    assert all(ms > 0 for name, ms in phases.items() if name not in ('data', 'preprocess')), out
    assert sum(phases.values()) <= total * 1.05  # medians of parts: not exactly additive
    assert phases['backward'] > phases['matching']
    assert 'Self CPU time total' in out  # torch's op table
