"""Where the shipped configs are, in a checkout and in an installed wheel alike.

A wheel carries them inside the package, in OpenMMLab's layout: ``mmdet_deformdetr/.mim/configs``
and ``mmdet_deformdetr/.mim/model-index.yml`` (copied there by ``setup.py`` when the wheel is
built, as mmdet does for its own). A checkout, and an editable install of it (``pip install -e``),
read ``configs/`` at the repository root. :func:`configs_root` is the one place that knows both;
the tools' defaults, the checkpoint mismatch message and users' scripts go through it::

    from mmengine.config import Config
    from mmdet_deformdetr import find_config

    cfg = Config.fromfile(find_config('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'))
"""

import contextlib
import copy
import functools
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple, Union

_PACKAGE_DIR = Path(__file__).resolve().parent
# the folder every shipped config tree has; it tells our configs from another project's
_MARKER = 'deformable_detr'


def configs_root() -> Path:
    """The folder that holds the shipped configs (``deformable_detr/``, ``demo/``).

    Returns:
        ``<package>/.mim/configs`` in an installed wheel, ``<repository>/configs`` in a checkout
        or an editable install.

    Raises:
        FileNotFoundError: neither exists (a package built without ``setup.py``'s build step).
    """
    candidates = (_PACKAGE_DIR / '.mim' / 'configs', _PACKAGE_DIR.parent / 'configs')
    for candidate in candidates:
        if (candidate / _MARKER).is_dir():
            return candidate
    raise FileNotFoundError(
        'the shipped configs are missing: looked in '
        + ' and '.join(str(path) for path in candidates)
        + '. Install from a checkout with `pip install .` (the build copies configs/ into the '
        'package) or `pip install -e .`'
    )


def find_config(config: Union[str, os.PathLike]) -> Path:
    """A config file: ``config`` itself when it exists, else the shipped config of that name.

    Args:
        config: a path, or a name relative to :func:`configs_root` with or without the leading
            ``configs/`` (``'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'``).

    Raises:
        FileNotFoundError: neither a file nor a shipped config; the message names both places.
    """
    path = Path(config)
    if path.is_file():
        return path
    relative = Path(*path.parts[1:]) if path.parts[:1] == ('configs',) else path
    root = configs_root()
    shipped = root / relative
    if not path.is_absolute() and shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f'config {str(config)!r}: no such file, and no shipped config of that name under {root}'
    )


def shipped_config_files() -> List[Path]:
    """Every ``.py`` file under :func:`configs_root`, sorted."""
    root = configs_root()
    return sorted(path for path in root.glob('**/*.py') if '__pycache__' not in path.parts)


@contextlib.contextmanager
def external_config_index_read_once() -> Iterator[None]:
    """Within this block, mmengine looks each ``package::path`` base up once.

    For every ``mmdet::_base_/...`` base, ``Config.fromfile`` reads mmdet's ``model-index.yml`` and
    the ~200 ``metafile.yml`` it lists (about 0.2 s), only to find that a base is no experiment
    and to fall back to the path. Reading many configs in a row (the checkpoint mismatch message
    scans every shipped config; the tests parse hundreds) then costs mostly YAML parsing. Inside
    the block each (package, config) lookup is done once: its answer, or the ValueError that sends
    mmengine to the base path, is remembered and given again (answers as copies). Files that
    change inside the block are not seen; outside it mmengine is untouched.
    """
    from mmengine.config import utils

    lookup: Callable[[str, str], dict] = utils._get_cfg_metainfo
    answers: Dict[Tuple[str, str], Tuple[Any, Any]] = {}

    @functools.wraps(lookup)
    def read_once(package_path: str, cfg_path: str) -> dict:
        key = (package_path, cfg_path)
        if key not in answers:
            try:
                answers[key] = (lookup(package_path, cfg_path), None)
            except ValueError as error:
                answers[key] = (None, error)
        found, error = answers[key]
        if error is not None:
            raise ValueError(*error.args)
        return copy.deepcopy(found)

    utils._get_cfg_metainfo = read_once
    try:
        yield
    finally:
        utils._get_cfg_metainfo = lookup
