"""Files that are either complete or absent: the write-then-rename helpers of
``AtomicCheckpointHook`` (``atomic_checkpoint.py`` explains the scheme), and what
``last_checkpoint`` names."""

import os
import os.path as osp
from typing import List, Optional

#: suffix of the temporary files a save writes before renaming them into place
PARTIAL_SUFFIX = '.writing'


def _fsync_path(path: str) -> None:
    """Flush ``path`` (a file, or a folder's entries after a rename) to the storage device."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # folders cannot be opened on Windows; the rename is atomic without it
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def partial_path(path: str) -> str:
    """The temporary name ``path`` is written under: ``<folder>/.<name>.writing``."""
    folder, name = osp.split(path)
    return osp.join(folder, f'.{name}{PARTIAL_SUFFIX}')


def publish(partial: str, path: str) -> None:
    """fsync ``partial``, rename it to ``path`` (replacing any file there), fsync the folder."""
    _fsync_path(partial)
    os.replace(partial, path)
    _fsync_path(osp.dirname(path) or '.')


def write_text_atomically(path: str, text: str) -> None:
    """Replace the file ``path`` by ``text``; a reader (or a kill) sees the old or the new text."""
    partial = partial_path(path)
    with open(partial, 'w') as file:
        file.write(text)
    publish(partial, path)


def remove_partial_files(folder: str) -> List[str]:
    """Delete the ``.*.writing`` files an interrupted save left in ``folder``; their names."""
    if not osp.isdir(folder):
        return []
    names = sorted(
        name
        for name in os.listdir(folder)
        if name.startswith('.') and name.endswith(PARTIAL_SUFFIX)
    )
    for name in names:
        os.remove(osp.join(folder, name))
    return names


def partial_files_note(folder: str, names: List[str]) -> str:
    """The log line for the partial files ``names`` removed from ``folder``."""
    return (
        f'Removed {len(names)} incomplete file(s) that an interrupted checkpoint save left in '
        f'{folder}: {", ".join(names)}. The checkpoints themselves are complete (they are '
        f'renamed into place only once fully written).'
    )


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def last_checkpoint_of(work_dir: str) -> Optional[str]:
    """What ``work_dir/last_checkpoint`` names; None when the file is missing or empty."""
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return None
    with open(pointer) as file:
        return file.read().strip() or None
