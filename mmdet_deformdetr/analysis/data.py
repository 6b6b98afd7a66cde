"""The config's val set, with its location overridable (the analysis tools' ``--data-root``)."""

from typing import Optional

from mmdet.registry import DATASETS
from mmengine.config import Config
from mmengine.dataset import BaseDataset


def val_dataset(
    cfg: Config,
    data_root: Optional[str] = None,
    ann_file: Optional[str] = None,
    img_prefix: Optional[str] = None,
) -> BaseDataset:
    """Build ``cfg.val_dataloader.dataset`` (test pipeline included), every image of it.

    Args:
        cfg: a config whose default scope is set (``init_default_scope``).
        data_root, ann_file, img_prefix: replace the dataset's ``data_root``, ``ann_file`` and
            ``data_prefix.img`` when given.

    Raises:
        SystemExit: the set holds no image, naming where it looked.
    """
    dataset_cfg = cfg.val_dataloader.dataset.copy()
    if data_root:
        dataset_cfg.data_root = data_root
    if ann_file:
        dataset_cfg.ann_file = ann_file
    if img_prefix:
        dataset_cfg.data_prefix = dict(img=img_prefix)
    dataset_cfg.pop('indices', None)
    dataset = DATASETS.build(dataset_cfg)
    if len(dataset) < 1:
        raise SystemExit(
            f'the val set (data_root={dataset_cfg.get("data_root")!r}, ann_file='
            f'{dataset_cfg.get("ann_file")!r}) holds no image: point --data-root '
            '/ --ann-file at a COCO-format set'
        )
    return dataset
