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

import os
from pathlib import Path
from typing import List, Union

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
