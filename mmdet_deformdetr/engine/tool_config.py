"""The config loading that ``tools/train.py`` and ``tools/test.py`` share."""
import os.path as osp
from typing import Optional

from mmengine.config import Config


def load_tool_config(config: str, launcher: str, cfg_options: Optional[dict],
                     work_dir: Optional[str]) -> Config:
    """Load ``config`` and apply the common command line, in mmdet's order of precedence.

    ``cfg_options`` are merged over the file; the work dir is the command line's, else the
    config's, else ``./work_dirs/<config name>``.
    """
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg
