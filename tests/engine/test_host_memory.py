"""HostMemoryHook on a tiny runner with two dataloader workers, and the soak script's analysis
of a memory curve (the 3,000-iteration soak itself is in docs/robustness.md)."""

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner

from mmdet_deformdetr.engine.host_memory import COLUMNS, sample_process_tree
from tools.analysis_tools.soak_memory import analyze, growth


class _Linear(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        output = self.linear(torch.stack(list(inputs)))
        return dict(loss=output.pow(2).mean()) if mode == 'loss' else [output]


def test_samples_main_process_and_workers(tmp_path):
    out_file = tmp_path / 'memory.csv'
    runner = Runner(
        model=_Linear(),
        work_dir=str(tmp_path),
        train_dataloader=dict(
            dataset=[dict(inputs=torch.ones(2) * i) for i in range(8)],
            batch_size=2,
            num_workers=2,
            persistent_workers=True,
            sampler=dict(type='InfiniteSampler', shuffle=False),
            collate_fn=dict(type='default_collate'),
        ),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=4),
        default_hooks=dict(checkpoint=None),
        custom_hooks=[dict(type='HostMemoryHook', interval=2, out_file=str(out_file))],
        experiment_name=f'host_memory_{tmp_path.name}',
        default_scope='mmdet',
    )
    runner.train()
    # the persistent workers' iterator is held in a reference cycle of the Runner: shut them down
    # now, because the garbage collector finalises it later (in another test) with its queues
    # already torn down, and then waits 5 s per worker for them to notice
    runner.train_loop.dataloader_iterator._iterator._shutdown_workers()
    with open(out_file, newline='') as file:
        rows = list(csv.DictReader(file))
    assert [int(row['iter']) for row in rows] == [0, 2, 4]
    assert list(rows[0]) == list(COLUMNS)
    # before the first iteration the workers have not started; then the two of them
    assert [int(row['workers']) for row in rows[1:]] == [2, 2]
    for row in rows[1:]:
        values = {key: int(row[key]) for key in COLUMNS if key not in ('iter', 'seconds')}
        assert 0 < values['uss_main'] <= values['pss_main'] <= values['rss_main']
        assert 0 < values['pss_workers'] <= values['rss_workers']
        assert values['pss_total'] == values['pss_main'] + values['pss_workers']
        assert 0 < values['anon_main'] <= values['rss_main'] and values['anon_workers'] > 0


def test_sample_of_this_process():
    sample = sample_process_tree(os.getpid())
    assert sample['rss_main'] > 100 * 2**20  # torch is loaded
    assert sample['anon_main'] > 0


def _write_curve(path: Path, factor_per_1000: float) -> Path:
    with open(path, 'w', newline='') as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        for iteration in range(0, 3001, 100):
            value = int(800 * 2**20 * (1 + factor_per_1000 * iteration / 1000))
            writer.writerow(
                dict(
                    {key: value for key in COLUMNS},
                    iter=iteration,
                    seconds=iteration,
                    workers=2,
                )
            )
    return path


def _samples(path: Path):
    with open(path, newline='') as file:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]


def test_growth_after_warm_up(tmp_path):
    # 1 % per 1,000 iterations: from iteration 500 to 3,000, 2.5 % of the value at 500
    leak = growth(_samples(_write_curve(tmp_path / 'leak.csv', 0.01)), 'pss_total', warmup=500)
    assert 2.48 <= leak['last_vs_first_percent'] <= 2.49 and 2.48 <= leak['fitted_percent'] <= 2.49
    flat = growth(_samples(_write_curve(tmp_path / 'flat.csv', 0.0)), 'pss_total', warmup=500)
    assert flat['last_vs_first_percent'] == flat['fitted_percent'] == 0.0
    samples = [
        dict(iter=float(i), x=float(v)) for i, v in [(0, 5), (100, 10), (200, 10), (300, 11)]
    ]
    values = growth(samples, 'x', warmup=100)
    assert values['last_vs_first_percent'] == values['fitted_percent'] == 10.0


@pytest.mark.slow
def test_soak_analysis_writes_the_verdict_and_the_plot(tmp_path):
    result = analyze(str(_write_curve(tmp_path / 'leak.csv', 0.01)), warmup=500, max_growth=2.0)
    assert not result['passed'] and 2.4 < result['worst_growth_percent'] < 2.5
    assert json.loads((tmp_path / 'soak_memory.json').read_text())['passed'] is False
    assert (tmp_path / 'soak_memory.png').stat().st_size > 10_000
