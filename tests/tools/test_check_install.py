"""tools/misc/check_install.py: the CPU checks as a user runs them, and the CUDA branch through
mocks (a fake "CUDA op" that is the CPU kernel passes; one that returns wrong numbers, or raises
the error of a kernel built for another GPU, fails)."""

import subprocess
import sys

import pytest
import torch

from mmdet_deformdetr import ops
from tests.helpers.tools import REPO_ROOT, tool_env
from tools.misc import check_install

SCRIPT = REPO_ROOT / 'tools' / 'misc' / 'check_install.py'
NO_CUDA_OPS = 'mmcv 2.1.0 was compiled without CUDA'


def cpu_kernel_as_cuda_op(*args):
    return ops.multi_scale_deformable_attn(*args, impl='cpu')


def five_percent_off(*args):
    return cpu_kernel_as_cuda_op(*args) * 1.05


def built_for_another_gpu(*args):
    raise RuntimeError('CUDA error: no kernel image is available for execution on the device')


@pytest.mark.slow
def test_cpu_run_passes_and_says_what_runs():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), '--device', 'cpu'],
        capture_output=True,
        text=True,
        timeout=600,
        env=tool_env(),
        cwd=REPO_ROOT.parent,  # from outside the checkout
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for expected in ('versions', 'package', 'attention implementation per device', 'op parity'):
        assert any(line.startswith(expected) for line in lines), expected
    for name in ('python', 'torch', 'mmcv', 'mmcv ops', 'mmengine', 'mmdet', 'mmdet_deformdetr'):
        assert any(line.split()[: len(name.split())] == name.split() for line in lines), name
    assert any(
        line.startswith('  PASS  cpu ') and "'cpu': our C++ kernel" in line for line in lines
    )
    parity = [line for line in lines if 'cpu kernel vs grid_sample, float64' in line]
    assert len(parity) == 4 and all(line.startswith('  PASS') for line in parity)  # fwd + 3 grads
    assert lines[-1].startswith('OK: ') and "cpu runs 'cpu'" in lines[-1]


def test_cpu_parity_checks_pass():
    checks = check_install.cpu_parity()
    assert [check.name.split(', ')[-1] for check in checks] == [
        'forward',
        'backward (grad value)',
        'backward (grad sampling_locations)',
        'backward (grad attention_weights)',
    ]
    assert all(check.ok for check in checks), checks


def test_cpu_parity_fails_on_a_wrong_kernel(monkeypatch):
    reference_op = check_install._op
    monkeypatch.setattr(
        check_install, '_op', lambda impl: five_percent_off if impl == 'cpu' else reference_op(impl)
    )
    assert not any(check.ok for check in check_install.cpu_parity())


def test_cuda_parity_with_a_correct_op_passes_in_every_precision():
    checks = check_install.cuda_parity('cpu', cpu_kernel_as_cuda_op)
    assert len(checks) == 12  # float32, fp16 and bf16 autocast; forward and three gradients
    assert all(check.ok for check in checks), [c for c in checks if not c.ok]
    assert {check.name.split(', ')[1] for check in checks} == {
        'torch.float32',
        'autocast torch.float16',
        'autocast torch.bfloat16',
    }


def test_cuda_parity_fails_on_wrong_numbers():
    checks = check_install.cuda_parity('cpu', five_percent_off)
    failed = {check.name for check in checks if not check.ok}
    # 5% is over every tolerance (the loosest, bf16's, is 2^-7 = 0.8%)
    assert {name for name in failed if name.endswith('forward')} == {
        'cpu CUDA op vs cpu kernel, torch.float32, forward',
        'cpu CUDA op vs cpu kernel, autocast torch.float16, forward',
        'cpu CUDA op vs cpu kernel, autocast torch.bfloat16, forward',
    }


def test_cuda_parity_explains_a_kernel_built_for_another_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (9, 0))
    checks = check_install.cuda_parity('cpu', built_for_another_gpu)
    assert len(checks) == 3 and not any(check.ok for check in checks)
    assert 'rebuild mmcv with TORCH_CUDA_ARCH_LIST=9.0' in checks[0].detail


def test_a_gpu_without_mmcv_cuda_ops_is_a_problem_with_its_fix(monkeypatch):
    monkeypatch.setattr(ops, 'mmcv_cuda_problem', lambda: NO_CUDA_OPS)
    (check,) = check_install.implementation_checks(['cuda:0'])
    assert not check.ok
    assert check.detail.startswith("'pytorch' (grid_sample, many times slower): " + NO_CUDA_OPS)
    assert 'MMCV_WITH_OPS=1' in check.detail
    monkeypatch.setattr(ops, 'mmcv_cuda_problem', lambda: None)
    (check,) = check_install.implementation_checks(['cuda:0'])
    assert check.ok and check.detail.startswith("'cuda': mmcv's CUDA op")


def test_main_exits_non_zero_with_a_one_line_summary(monkeypatch, capsys):
    monkeypatch.setattr(ops, 'mmcv_cuda_problem', lambda: NO_CUDA_OPS)
    assert check_install.main(['--device', 'cpu', 'cuda:0']) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith('PROBLEM: 1 of ') and last.endswith('checks failed: cuda:0')


def test_main_runs_the_cuda_parity_of_each_gpu(monkeypatch, capsys):
    monkeypatch.setattr(ops, 'mmcv_cuda_problem', lambda: None)
    real_cuda_parity, devices = check_install.cuda_parity, []

    def fake_cuda_parity(device, op=five_percent_off):
        devices.append(device)
        return real_cuda_parity('cpu', op)

    monkeypatch.setattr(check_install, 'cuda_parity', fake_cuda_parity)
    assert check_install.main(['--device', 'cpu', 'cuda:0', 'cuda:1']) == 1
    assert devices == ['cuda:0', 'cuda:1']
    output = capsys.readouterr().out
    assert '  FAIL  cpu CUDA op vs cpu kernel, torch.float32, forward' in output
    monkeypatch.setattr(
        check_install, 'cuda_parity', lambda device: fake_cuda_parity(device, cpu_kernel_as_cuda_op)
    )
    assert check_install.main(['--device', 'cpu', 'cuda:0']) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == "OK: 19 checks passed (cpu runs 'cpu'; cuda:0 runs 'cuda')"
