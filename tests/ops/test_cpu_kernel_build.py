"""The JIT build of the C++ kernel is safe when two processes start it at once."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = '''
import warnings
import torch
from mmdet_deformdetr.ops.cpu_kernel import load_cpu_extension
warnings.simplefilter('error', RuntimeWarning)  # a failed build warns: make it fail instead
extension = load_cpu_extension()
torch.manual_seed(0)
value = torch.randn(1, 20, 2, 8, dtype=torch.float64)
shapes = torch.tensor([[4, 5]])
starts = torch.tensor([0])
locations = torch.rand(1, 3, 2, 1, 2, 2, dtype=torch.float64)
weights = torch.rand(1, 3, 2, 1, 2, dtype=torch.float64)
print(repr(extension.forward(value, shapes, starts, locations, weights).sum().item()))
'''


@pytest.mark.slow
def test_two_processes_build_at_once(tmp_path: Path) -> None:
    """Both processes must end up with a working kernel from one build directory: torch's JIT
    serialises the build with a file lock in that directory."""
    environment = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path))
    children = [
        subprocess.Popen([sys.executable, '-c', CHILD], env=environment, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [child.communicate(timeout=900) for child in children]
    for child, (_, stderr) in zip(children, results):
        assert child.returncode == 0, stderr
    assert results[0][0].strip() == results[1][0].strip() != ''
    built = [path for path in tmp_path.rglob('*.so')]
    assert len(built) == 1, built
