"""The JIT build of the C++ kernel: safe when two processes start it at once, logged, shared by
every checkout with the same kernel sources, and imported as built by later processes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = """
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
"""


@pytest.mark.slow
def test_two_processes_build_at_once(tmp_path: Path) -> None:
    """Both processes must end up with a working kernel from one build directory: torch's JIT
    serialises the build with a file lock in that directory."""
    environment = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path))
    children = [
        subprocess.Popen(
            [sys.executable, '-c', CHILD],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [child.communicate(timeout=900) for child in children]
    for child, (_, stderr) in zip(children, results):
        assert child.returncode == 0, stderr
    sums = [stdout.strip().splitlines()[-1] for stdout, _ in results]
    assert sums[0] == sums[1] != ''
    built = [path for path in tmp_path.rglob('*.so')]
    assert len(built) == 1, built
    # the minute-long first build is announced, not silent
    assert any('compiling the C++ CPU kernel' in stdout for stdout, _ in results)

    # A later process imports that library as it is: torch's `load` (which recompiles when the
    # include paths of the torch installation differ, i.e. in every other virtual environment)
    # is not called, nothing is compiled, and the numbers are the same.
    library = built[0]
    before = library.stat().st_mtime_ns
    no_load = (
        'import torch.utils.cpp_extension as cpp\n'
        'def refuse(*args, **kwargs):\n'
        '    raise AssertionError("torch.utils.cpp_extension.load was called")\n'
        'cpp.load = refuse\n'
    )
    later = subprocess.run(
        [sys.executable, '-c', no_load + CHILD],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert later.returncode == 0, later.stderr
    assert later.stdout.strip().splitlines()[-1] == sums[0]
    assert 'compiling' not in later.stdout
    assert library.stat().st_mtime_ns == before


def test_build_is_shared_by_checkouts_with_the_same_kernel(tmp_path: Path, monkeypatch) -> None:
    """The library's name and build folder depend on the kernel sources and flags, not on the
    checkout path, and the build compiles a staged copy (torch records its source paths)."""
    from mmdet_deformdetr.ops import cpu_kernel

    flags = cpu_kernel._compiler_flags()
    here = cpu_kernel._extension_name(flags)
    other_checkout = tmp_path / 'elsewhere' / 'csrc'
    shutil.copytree(cpu_kernel._CSRC, other_checkout)
    monkeypatch.setattr(cpu_kernel, '_CSRC', other_checkout)
    monkeypatch.setattr(cpu_kernel, '_SOURCE', other_checkout / cpu_kernel._SOURCE.name)
    assert cpu_kernel._extension_name(flags) == here
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path / 'cache'))
    staged = cpu_kernel._stage_sources(cpu_kernel._build_directory(here))
    assert staged.parent == tmp_path / 'cache' / here / 'src'
    assert sorted(p.name for p in staged.parent.iterdir()) == sorted(
        p.name for p in other_checkout.glob('*.[ch]*')
    )
    # another torch (or Python) is another library: it is imported without torch's checks
    with monkeypatch.context() as patch:
        patch.setattr(cpu_kernel.torch, '__version__', '0.0.0-other')
        assert cpu_kernel._extension_name(flags) != here
    # an edited kernel is another library
    (other_checkout / 'bilinear.h').write_text(
        '// edited\n' + (other_checkout / 'bilinear.h').read_text()
    )
    assert cpu_kernel._extension_name(flags) != here


def test_library_that_does_not_import_is_removed_for_a_rebuild(tmp_path: Path, monkeypatch) -> None:
    """A library cut off mid-write (a build killed while linking) fails to import: it is
    removed, so that torch's ninja build, which only compares file times, makes it again."""
    from mmdet_deformdetr.ops import cpu_kernel

    logged = []  # mmengine's logger writes wherever an earlier test pointed it
    monkeypatch.setattr(cpu_kernel, '_log', logged.append)
    library = tmp_path / 'msda_cpu_test.so'
    library.write_bytes(b'\x7fELF' + b'\0' * 60)  # an ELF header and nothing else
    assert cpu_kernel._import_built('msda_cpu_test', tmp_path) is None
    assert not library.exists()
    assert len(logged) == 1 and 'does not import' in logged[0], logged
    # no library, or a build holding the lock: nothing imported, nothing removed
    assert cpu_kernel._import_built('msda_cpu_test', tmp_path) is None
    library.write_bytes(b'\x7fELF')
    (tmp_path / 'lock').touch()
    assert cpu_kernel._import_built('msda_cpu_test', tmp_path) is None
    assert library.exists()
