"""The config's val or test set, with its location overridable (the tools' ``--data-root``)."""

from typing import Optional

from mmdet.registry import DATASETS
from mmengine.config import Config
from mmengine.dataset import BaseDataset


def eval_dataset(
    cfg: Config,
    data_root: Optional[str] = None,
    ann_file: Optional[str] = None,
    img_prefix: Optional[str] = None,
    split: str = 'val',
    max_images: Optional[int] = None,
) -> BaseDataset:
    """Build ``cfg.<split>_dataloader.dataset`` (test pipeline included), every image of it
    (the config's ``indices`` dropped) or its first ``max_images``.

    Args:
        cfg: a config whose default scope is set (``init_default_scope``).
        data_root, ann_file, img_prefix: replace the dataset's ``data_root``, ``ann_file`` and
            ``data_prefix.img`` when given.
        split: ``'val'`` or ``'test'``.
        max_images: keep the first N images (None: all).

    Raises:
        SystemExit: the set holds no image, naming where it looked.
    """
    dataset_cfg = cfg[f'{split}_dataloader'].dataset.copy()
    if data_root:
        dataset_cfg.data_root = data_root
    if ann_file:
        dataset_cfg.ann_file = ann_file
    if img_prefix:
        dataset_cfg.data_prefix = dict(img=img_prefix)
    dataset_cfg.pop('indices', None)
    if max_images:
        dataset_cfg.indices = max_images
    dataset = DATASETS.build(dataset_cfg)
    if len(dataset) < 1:
        raise SystemExit(
            f'the {split} set (data_root={dataset_cfg.get("data_root")!r}, ann_file='
            f'{dataset_cfg.get("ann_file")!r}) holds no image: point --data-root '
            '/ --ann-file at a COCO-format set'
        )
    return dataset
