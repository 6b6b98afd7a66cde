"""Safe ``torch.load``: the one reader of ``torch.save`` files, and its errors.

Every load of this package (``load_from``, ``resume``, ``tools/test.py CONFIG CKPT``,
``mmengine.runner.load_checkpoint``, ``deformdetr://``, the converter tool) ends in
:func:`safe_load`, which calls ``torch.load(..., weights_only=True)`` itself. Passing
``weights_only`` explicitly matters: torch lets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (a common
forum "fix") switch a load back to full unpickling only when the caller did not pass it, so the
variable cannot re-open code execution here. mmengine's own local loader passes nothing;
``mmdet_deformdetr/__init__.py`` therefore replaces it (see
:func:`~.loaders.load_from_local_safely`).

The restricted unpickler rebuilds tensors and plain containers and refuses any other global. The
formats we read need a handful of extra, inert types, allow-listed by exact name:

- ``argparse.Namespace``: the ``args`` entry of the official Deformable-DETR checkpoints;
- numpy arrays, scalars and dtypes: mmengine's message hub and dataset meta hold them;
- ``mmengine.logging.HistoryBuffer``: the message hub's logged scalars in mmengine training
  checkpoints. Pickle saves its ``_statistics_methods`` entries as
  ``builtins.getattr(HistoryBuffer, 'min')``. ``builtins.getattr`` itself is far too general to
  allow (``getattr`` of an allowed object can reach module globals), so the name
  ``builtins.getattr`` is mapped to :func:`_history_buffer_statistic`, which resolves only
  ``getattr(HistoryBuffer, <one of its statistics>)`` and refuses anything else.

:func:`install_safe_globals` also adds that list to torch's process-wide allow-list
(``torch.serialization.add_safe_globals``, torch's documented API), so a bare ``torch.load`` of our
files works after ``import mmdet_deformdetr``.

Errors (all :class:`CheckpointError`, so a tool can catch them once and print the message alone):

- :class:`UntrustedCheckpointError`: the file pickles a global that is not allow-listed. The
  message names the file and the globals, and the explicit ways to trust them:
  ``--trust-global module.Name`` (converter tool; tools may offer it through
  :func:`trust_globals`) or ``safe_load(path, extra_globals=[...])``.
- :class:`CorruptCheckpointError`: the file is empty, truncated, damaged or not a checkpoint;
  the message names it, its size and what to do, instead of torch's zip-reader or EOF errors.
"""

import argparse
import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

PathOrFile = Union[str, os.PathLike, io.IOBase]

# The statistics mmengine's HistoryBuffer registers for itself (history_buffer.py, __init__).
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')
# What torch.load writes first in a legacy (pre-1.6, non-zip) file: pickle protocol 2 of the
# magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = b'\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19'
_FORCE_NO_WEIGHTS_ONLY = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'
CONVERTER = 'tools/model_converters/deformable_detr_to_mmdet_deformdetr.py'


class CheckpointError(Exception):
    """Base of every checkpoint error of this package; the message says what to do."""


class UntrustedCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint needs a pickled global that is not allow-listed (it could run code)."""


class CorruptCheckpointError(CheckpointError, ValueError):
    """A checkpoint file is empty, truncated, damaged, or not a checkpoint at all."""


def _history_buffer_statistic(owner: Any, name: str) -> Callable:
    """Stand-in for ``builtins.getattr`` inside the restricted unpickler.

    Pickle stores ``HistoryBuffer._statistics_methods`` values (plain functions defined on
    the class) as ``getattr(HistoryBuffer, name)``. Only that exact call is honoured.
    """
    from mmengine.logging import HistoryBuffer

    if owner is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    owner_name = getattr(owner, '__qualname__', type(owner).__qualname__)
    # torch re-raises this as a plain UnpicklingError carrying the text; _refused_globals reads it
    raise UntrustedCheckpointError(
        f'refusing builtins.getattr({owner_name}, {name!r}) while unpickling: only '
        f'getattr(HistoryBuffer, one of {_HISTORY_BUFFER_STATISTICS}) is allowed'
    )


def _numpy_globals() -> List[Any]:
    """numpy types needed to rebuild arrays, scalars and dtypes (numpy 1.x and 2.x pickles)."""
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    entries: List[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    # numpy 1.x wrote ``numpy.core.multiarray.*``; numpy 2 renamed the module to ``numpy._core``.
    # The tuple form maps the old name onto the same function without importing the deprecated
    # ``numpy.core`` shim.
    for name in ('_reconstruct', 'scalar'):
        for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
            entries.append((getattr(multiarray, name), f'{module}.{name}'))
    # A dtype is rebuilt as ``np.dtype(...)`` and then BUILD with its state, which the unpickler
    # only allows on allow-listed types: numpy >= 1.25 gives each dtype its own class
    # (Float32DType, ...).
    for scalar_type in (
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
        np.complex64,
        np.complex128,
        np.str_,
        np.bytes_,
    ):
        dtype_class = type(np.dtype(scalar_type))
        if dtype_class is not np.dtype:
            entries.append(dtype_class)
    return entries


def safe_globals_list() -> List[Any]:
    """Every global the formats of this package need, for torch's weights-only unpickler."""
    from mmengine.logging import HistoryBuffer

    entries: List[Any] = [
        argparse.Namespace,
        HistoryBuffer,
        (_history_buffer_statistic, 'builtins.getattr'),
    ]
    entries.extend(_numpy_globals())
    return entries


def install_safe_globals() -> None:
    """Allow-list :func:`safe_globals_list` process-wide, so mmengine's loads accept our formats.

    Idempotent. Called once by ``mmdet_deformdetr/__init__.py``; see the module docstring for why
    this is the narrowest fix (torch's documented API, exact types, nothing patched).
    """
    torch.serialization.add_safe_globals(safe_globals_list())


def _global_names(entries: Iterable[Any]) -> set:
    names = set()
    for entry in entries:
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f'{entry.__module__}.{entry.__qualname__}')
    return names


def _refused_globals(source: PathOrFile, error: Exception, allowed: Sequence[Any]) -> List[str]:
    """Globals that made torch refuse ``source``; empty if ``error`` is not such a refusal."""
    gadget = re.search(r'refusing (builtins\.getattr\([^)]*\))', str(error))
    if gadget:  # our getattr stand-in refused the call (see _history_buffer_statistic)
        return [gadget.group(1)]
    try:  # zip files: every global the pickle names, without unpickling it
        if isinstance(source, io.IOBase):
            source.seek(0)
        found = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception:  # legacy (non-zip) or damaged files: what torch's message names
        found = re.findall(r'GLOBAL ([\w.]+)', str(error))
    allowed_names = _global_names(allowed)
    return sorted({name for name in found if name not in allowed_names})


def _refusal(label: str, names: List[str]) -> UntrustedCheckpointError:
    listed = ' '.join(f'--trust-global {name}' for name in names)
    env_note = (
        f' ({_FORCE_NO_WEIGHTS_ONLY} is set in the environment: it does not apply here; '
        'mmdet_deformdetr always loads with weights_only=True.)'
        if os.environ.get(_FORCE_NO_WEIGHTS_ONLY)
        else ''
    )
    return UntrustedCheckpointError(
        f'refusing to load {label}: it pickles {", ".join(names)}, which mmdet_deformdetr does '
        'not allow in a checkpoint (unpickling it could run code), so the file was not loaded.'
        f'{env_note} Only if you trust the file, allow exactly these globals: convert it once '
        f'into a file of plain tensors with `python {CONVERTER} {label} CLEAN.pth {listed}`, or '
        'in Python pass `extra_globals=[...]` to mmdet_deformdetr.checkpoint.safe_load '
        f'(process-wide: mmdet_deformdetr.checkpoint.trust_globals({names!r})).'
    )


def _damage(path: str) -> Optional[str]:
    """Why the file at ``path`` cannot be a readable ``torch.save`` file, or None if it looks
    intact (then a failed load has another cause, which is re-raised unchanged)."""
    size = os.path.getsize(path)
    if size == 0:
        return 'the file is empty'
    with open(path, 'rb') as stream:
        head = stream.read(len(_LEGACY_MAGIC))
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                if not any(name.endswith('data.pkl') for name in archive.namelist()):
                    return 'it is a zip archive but not one written by torch.save (no data.pkl)'
                bad_member = archive.testzip()  # CRC of every member; read only after a failure
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            return f'its zip archive is damaged ({error})'
        return f'{bad_member} inside it is damaged (CRC mismatch)' if bad_member else None
    if head.startswith(b'PK'):
        return (
            'it is cut short: torch.save writes a zip archive whose directory sits at the end, '
            'and the end is missing'
        )
    if head == _LEGACY_MAGIC:
        return 'it is a legacy torch.save file that is cut short or damaged'
    return 'it is not a torch.save file (neither its zip archive nor its legacy pickle format)'


def corrupt_checkpoint_error(path: Union[str, os.PathLike], reason: str) -> CorruptCheckpointError:
    """The one error for an unreadable checkpoint file: names it, its size and what to do."""
    path = os.fspath(path)
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    return CorruptCheckpointError(
        f'cannot read checkpoint {path} ({size} bytes): {reason}. Such files come from an '
        'interrupted download or copy, a run killed while saving, or a path that names another '
        'file. Download or copy it again (or check the path); to resume training, resume from an '
        'earlier checkpoint of the work dir (`tools/train.py CONFIG --resume PATH`).'
    )


def safe_load(
    source: PathOrFile,
    map_location: Any = 'cpu',
    *,
    extra_globals: Sequence[Any] = (),
    mmap: bool = False,
) -> Any:
    """``torch.load`` with ``weights_only=True`` and this package's allow-list.

    Args:
        source: a path or a binary file object holding a ``torch.save`` file.
        map_location: as for :func:`torch.load`; defaults to ``'cpu'``.
        extra_globals: further globals the caller trusts for this one call (classes or functions,
            or ``(object, 'module.name')`` pairs as for ``torch.serialization.add_safe_globals``).
        mmap: map the tensors from the file instead of reading them (``torch.load(mmap=True)``;
            cheap when only the metadata is needed; zip-format files only).

    Returns:
        The unpickled object (usually a dict).

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        UntrustedCheckpointError: the file needs a global that is not allow-listed.
        CorruptCheckpointError: the file is empty, truncated, damaged or not a checkpoint.
    """
    if not isinstance(source, io.IOBase):
        source = os.fspath(Path(source).expanduser())
        if not os.path.isfile(source):
            hint = (
                f' (a directory: for a Hugging Face model directory use deformdetr://{source})'
                if os.path.isdir(source)
                else ''
            )
            raise FileNotFoundError(f'checkpoint file not found: {source}{hint}')
        if os.path.getsize(source) == 0:  # torch would say only "EOFError: Ran out of input"
            raise corrupt_checkpoint_error(source, 'the file is empty')
    allowed = safe_globals_list() + list(extra_globals)
    # torch's ``safe_globals`` context removes its entries on exit, even those that were already
    # allow-listed process-wide (install_safe_globals); hand it only the entries it may remove.
    installed = set(torch.serialization.get_safe_globals())
    for_this_call = [entry for entry in allowed if entry not in installed]
    label = source if isinstance(source, str) else 'the checkpoint stream'
    try:
        with torch.serialization.safe_globals(for_this_call):
            return torch.load(
                source,
                map_location=map_location,
                weights_only=True,
                **({'mmap': True} if mmap else {}),
            )
    except UntrustedCheckpointError:  # raised by _history_buffer_statistic
        raise
    except Exception as error:  # noqa: BLE001  (classified below; anything else is re-raised)
        refused = (
            _refused_globals(source, error, allowed)
            if isinstance(error, pickle.UnpicklingError)
            else []
        )
        if refused:
            raise _refusal(label, refused) from None
        reason = _damage(source) if isinstance(source, str) else None
        if reason is None:
            raise
        # `from None`: torch's zip-reader / EOF traceback says nothing the user can act on
        raise corrupt_checkpoint_error(source, reason) from None


def load_safetensors(path: Union[str, os.PathLike], device: str = 'cpu') -> dict:
    """Read a ``.safetensors`` file (tensors only, never code) into a dict of tensors.

    Raises:
        CorruptCheckpointError: the file is not a readable safetensors file.
    """
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise ImportError(
            'reading .safetensors files needs the `safetensors` package: pip install safetensors'
        ) from error
    if os.path.getsize(path) == 0:
        raise corrupt_checkpoint_error(path, 'the file is empty')
    try:
        return load_file(os.fspath(path), device=device)
    except Exception as error:  # noqa: BLE001  (safetensors raises its own error types)
        raise corrupt_checkpoint_error(
            path, f'it is not a readable .safetensors file ({error})'
        ) from None


def trusted_global_by_name(qualified_name: str) -> Tuple[Any, str]:
    """Import ``'package.module.Name'`` (or ``'package.module.Outer.Inner'``) for ``extra_globals``.

    Returns the ``(object, qualified_name)`` pair form, so the name in the file is matched exactly.
    """
    import importlib

    parts = qualified_name.split('.')
    for split in range(len(parts) - 1, 0, -1):  # longest importable module prefix first
        try:
            obj: Any = importlib.import_module('.'.join(parts[:split]))
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj, qualified_name
    raise ValueError(
        f'cannot import {qualified_name!r}; expected a dotted name like package.module.Class'
    )


def trust_globals(qualified_names: Sequence[str]) -> None:
    """Allow these exact globals in every load of this process (a tool's ``--trust-global``).

    The explicit, visible way to widen the allow-list; ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is not.
    """
    torch.serialization.add_safe_globals([trusted_global_by_name(n) for n in qualified_names])
