"""Safe ``torch.load`` for the checkpoint formats this package reads.

Every load goes through ``torch.load(..., weights_only=True)``: the restricted unpickler rebuilds
tensors and plain containers and refuses any other global, so a checkpoint cannot run code while
it is read. The formats we read need a handful of extra, inert types, allow-listed by exact name:

- ``argparse.Namespace``: the ``args`` entry of the official Deformable-DETR checkpoints;
- numpy arrays, scalars and dtypes: mmengine's message hub and dataset meta hold them;
- ``mmengine.logging.HistoryBuffer``: the message hub's logged scalars in mmengine training
  checkpoints. Pickle saves its ``_statistics_methods`` entries as
  ``builtins.getattr(HistoryBuffer, 'min')``. ``builtins.getattr`` itself is far too general to
  allow (``getattr`` of an allowed object can reach module globals), so the name
  ``builtins.getattr`` is mapped to :func:`_history_buffer_statistic`, which resolves only
  ``getattr(HistoryBuffer, <one of its statistics>)`` and refuses anything else.

Two ways in:

- :func:`safe_load` (used by our converters and tools) passes the allow-list through torch's
  ``safe_globals`` context manager, so it does not depend on process-wide state.
- :func:`install_safe_globals` adds the same list to torch's process-wide allow-list with
  ``torch.serialization.add_safe_globals`` (torch's documented API). mmengine's
  ``load_from_local`` calls ``torch.load(filename, map_location)`` without ``weights_only``; on
  torch >= 2.6 that means ``weights_only=True``, which refuses mmengine's own training checkpoints
  (``HistoryBuffer``, numpy) and the official files (``argparse.Namespace``). Widening the
  allow-list by these exact, inert types makes ``Runner(resume=True)``, ``load_from`` and
  ``mmengine.runner.load_checkpoint`` work again, while every other global is still refused.
  ``mmdet_deformdetr/__init__.py`` calls it once.

A file that needs any other global is refused with :class:`UntrustedCheckpointError`, which names
the globals. To load such a file you must trust it explicitly:
``safe_load(path, extra_globals=[Cls])`` (``--trust-global module.Cls`` in the converter tool),
or, for mmengine's own loading, ``torch.serialization.add_safe_globals([Cls])`` in a module of
your config's ``custom_imports``. The environment variable ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
would switch mmengine's default loads back to full unpickling; :func:`safe_load` passes
``weights_only=True`` explicitly and ignores it.
"""

import argparse
import io
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Iterable, List, Sequence, Tuple, Union

import numpy as np
import torch

PathOrFile = Union[str, os.PathLike, io.IOBase]

# The statistics mmengine's HistoryBuffer registers for itself (history_buffer.py, __init__).
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs a pickled global that is not allow-listed (it could run code)."""


def _history_buffer_statistic(owner: Any, name: str) -> Callable:
    """Stand-in for ``builtins.getattr`` inside the restricted unpickler.

    Pickle stores ``HistoryBuffer._statistics_methods`` values (plain functions defined on
    the class) as ``getattr(HistoryBuffer, name)``. Only that exact call is honoured.
    """
    from mmengine.logging import HistoryBuffer

    if owner is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise UntrustedCheckpointError(
        f'refusing getattr({owner!r}, {name!r}) while unpickling: only '
        f'getattr(HistoryBuffer, one of {_HISTORY_BUFFER_STATISTICS}) is allowed')


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
    for scalar_type in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                        np.uint32, np.uint64, np.float16, np.float32, np.float64, np.complex64,
                        np.complex128, np.str_, np.bytes_):
        dtype_class = type(np.dtype(scalar_type))
        if dtype_class is not np.dtype:
            entries.append(dtype_class)
    return entries


def safe_globals_list() -> List[Any]:
    """Every global the formats of this package need, for torch's weights-only unpickler."""
    from mmengine.logging import HistoryBuffer

    entries: List[Any] = [argparse.Namespace, HistoryBuffer,
                          (_history_buffer_statistic, 'builtins.getattr')]
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


def _untrusted_globals(source: PathOrFile, allowed: Sequence[Any]) -> List[str]:
    """Globals in ``source`` that neither torch nor ``allowed`` accepts (best effort)."""
    try:
        if isinstance(source, io.IOBase):
            source.seek(0)
        found = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception:  # legacy (non-zip) files cannot be scanned without unpickling them
        return []
    allowed_names = _global_names(allowed)
    return sorted(name for name in found if name not in allowed_names)


def _refusal(source: PathOrFile, error: Exception,
             allowed: Sequence[Any]) -> UntrustedCheckpointError:
    names = _untrusted_globals(source, allowed)
    if not names:
        names = re.findall(r'GLOBAL ([\w.]+)', str(error)) or ['(see the error below)']
    label = source if not isinstance(source, io.IOBase) else 'the checkpoint stream'
    return UntrustedCheckpointError(
        f'refusing to load {label}: it pickles global(s) {", ".join(names)} that are not on the '
        'allow-list of mmdet_deformdetr.checkpoint.safe_load, and unpickling them could run code. '
        'Only if you trust the file, allow those exact types explicitly: '
        '`safe_load(path, extra_globals=[<the class>])`, '
        '`tools/model_converters/deformable_detr_to_mmdet_deformdetr.py '
        '--trust-global module.Class`, '
        'or for mmengine loading `torch.serialization.add_safe_globals([<the class>])` in a module '
        f'listed in your config\'s custom_imports. torch said: {error}')


def safe_load(source: PathOrFile, map_location: Any = 'cpu', *,
              extra_globals: Sequence[Any] = ()) -> Any:
    """``torch.load`` with ``weights_only=True`` and this package's allow-list.

    Args:
        source: a path or a binary file object holding a ``torch.save`` file.
        map_location: as for :func:`torch.load`; defaults to ``'cpu'``.
        extra_globals: further globals the caller trusts for this one call (classes or functions,
            or ``(object, 'module.name')`` pairs as for ``torch.serialization.add_safe_globals``).

    Returns:
        The unpickled object (usually a dict).

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        UntrustedCheckpointError: the file needs a global that is not allow-listed.
    """
    if not isinstance(source, io.IOBase):
        source = os.fspath(Path(source).expanduser())
        if not os.path.isfile(source):
            raise FileNotFoundError(f'checkpoint file not found: {source}')
    allowed = safe_globals_list() + list(extra_globals)
    # torch's ``safe_globals`` context removes its entries on exit, even those that were already
    # allow-listed process-wide (install_safe_globals); hand it only the entries it may remove.
    installed = set(torch.serialization.get_safe_globals())
    for_this_call = [entry for entry in allowed if entry not in installed]
    try:
        with torch.serialization.safe_globals(for_this_call):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if isinstance(error, UntrustedCheckpointError):
            raise
        raise _refusal(source, error, allowed) from error


def load_safetensors(path: Union[str, os.PathLike], device: str = 'cpu') -> dict:
    """Read a ``.safetensors`` file (tensors only, never code) into a dict of tensors."""
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise ImportError('reading .safetensors files needs the `safetensors` package: '
                          'pip install safetensors') from error
    return load_file(os.fspath(path), device=device)


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
    raise ValueError(f'cannot import {qualified_name!r}; expected a dotted name like '
                     'package.module.Class')
