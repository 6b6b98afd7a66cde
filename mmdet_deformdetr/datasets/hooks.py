"""``CheckNumClassesHook``: the classifier size and the data's classes must agree, checked once
when a run starts.

A model with fewer classes than the data fails in training with an ``IndexError`` inside the
matcher's cost indexing (labels >= num_classes), one with more fails at evaluation (``CocoMetric``
maps labels through the dataset's category ids). Neither names the setting to change. mmdet's own
``NumClassCheckHook`` checks every module with a ``num_classes`` attribute with an ``assert``
(gone under ``python -O``), names neither setting, and runs before each epoch but not before
``tools/test.py``; this hook checks the head against every loop's dataset at the start of the run
and says which key to change.
"""

from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from .checks import BadDataError


class CheckNumClassesHook(Hook):
    """Raise :class:`BadDataError` when ``model.bbox_head.num_classes`` differs from the number
    of ``metainfo.classes`` of the train, val or test dataset, before the first iteration."""

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        self._check(runner, 'train_dataloader', runner.train_loop)
        self._check(runner, 'val_dataloader', runner.val_loop)  # built by Runner.train already

    def before_val(self, runner) -> None:
        self._check(runner, 'val_dataloader', runner.val_loop)

    def before_test(self, runner) -> None:
        self._check(runner, 'test_dataloader', runner.test_loop)

    @staticmethod
    def _check(runner, loader_key: str, loop) -> None:
        dataloader = getattr(loop, 'dataloader', None)
        if dataloader is None:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if not hasattr(model, 'bbox_head') and hasattr(model, 'module'):  # DetTTAModel
            model = model.module
        head = getattr(model, 'bbox_head', None)
        classes = dataloader.dataset.metainfo.get('classes')
        if head is None or not hasattr(head, 'num_classes') or classes is None:
            return
        if isinstance(classes, str):
            raise BadDataError(
                f'{loader_key}.dataset.metainfo.classes is the string '
                f'{classes!r}; it must be a tuple of names, e.g. ({classes!r},)'
            )
        if head.num_classes != len(classes):
            raise BadDataError(
                f'model.bbox_head.num_classes = {head.num_classes}, but {loader_key}.dataset '
                f'has {len(classes)} classes (metainfo.classes = {tuple(classes)}). Set '
                f'model.bbox_head.num_classes={len(classes)} in the config (or '
                f'--cfg-options model.bbox_head.num_classes={len(classes)}), or list the '
                f'{head.num_classes} classes to train on in {loader_key}.dataset.metainfo.classes.'
            )
