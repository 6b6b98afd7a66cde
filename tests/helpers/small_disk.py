"""A small file system for the disk-full tests: a real tmpfs where ``mount`` is permitted (root,
as in CI), otherwise the write shim of ``fault_hooks.FaultSmallDiskHook`` (selected by the
``--cfg-options`` this helper returns), so that the tests run everywhere."""

import shutil
import subprocess
from pathlib import Path
from typing import List

from tests.helpers.fault_hooks import used_bytes


class SmallDisk:
    """A folder holding ``size`` bytes at most: ``path`` (train into a sub-folder of it),
    ``options`` (for tools/train.py's --cfg-options), ``free()``, ``fill()``,
    ``make_read_only()``; ``close()`` unmounts."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        path.mkdir(parents=True, exist_ok=True)
        mount = subprocess.run(
            ['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
            capture_output=True,
            text=True,
        )
        self.mounted = mount.returncode == 0
        self._bound: List[Path] = []
        self.options: List[str] = (
            []
            if self.mounted
            else [f'custom_hooks.3.limit_bytes={size}', f'custom_hooks.3.root={path}']
        )

    def free(self) -> int:
        if self.mounted:
            return shutil.disk_usage(self.path).free
        return max(0, self.size - used_bytes(str(self.path)))

    def fill(self, leave_free: int) -> Path:
        """Write a filler file so that ``leave_free`` bytes stay free; its path."""
        filler = self.path / 'filler.bin'
        count = max(0, self.free() - leave_free)
        with open(filler, 'wb') as file:
            for start in range(0, count, 1 << 20):
                file.write(b'\0' * min(1 << 20, count - start))
        return filler

    def make_read_only(self, folder: Path) -> None:
        """New writes into ``folder`` fail with EROFS: a read-only bind mount over it (files
        already open for writing, such as a log, stay writable, which a remount of the whole file
        system would refuse), or the shim's marker."""
        if self.mounted:
            subprocess.run(['mount', '--bind', str(folder), str(folder)], check=True)
            self._bound.append(folder)
            subprocess.run(['mount', '-o', 'remount,bind,ro', str(folder)], check=True)
        else:
            (self.path / '.read_only').touch()

    def close(self) -> None:
        for folder in reversed(self._bound):
            subprocess.run(['umount', '-l', str(folder)], check=False)
        self._bound.clear()
        if self.mounted:
            subprocess.run(['umount', '-l', str(self.path)], check=False)
            self.mounted = False

    def __enter__(self) -> 'SmallDisk':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
