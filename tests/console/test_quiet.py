"""mmdet_deformdetr/console/quiet.py: each listed message is kept off the screen where it really
comes from (mmengine, pycocotools, torch's ONNX exporter), and nothing else is: a new warning,
another log record, other printed text still show."""

import contextlib
import io
import logging
import warnings
from pathlib import Path

import pytest

from mmdet_deformdetr.console import quiet


@pytest.fixture
def recorded_warnings():
    """Warnings recorded with the 'always' action (no once-per-location suppression), the
    filters of the test restored afterwards."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        yield caught


def _texts(caught) -> list:
    return [str(w.message) for w in caught]


def test_mmengines_pkg_resources_warnings_hidden_a_new_warning_shown(recorded_warnings):
    from mmengine.utils import is_installed

    is_installed('mmdet')  # imports and reloads pkg_resources: the warning, twice
    assert any('pkg_resources is deprecated' in t for t in _texts(recorded_warnings))
    recorded_warnings.clear()

    quiet.install_warning_filters()
    is_installed('mmdet')
    warnings.warn('a warning nobody has listed', UserWarning, stacklevel=1)
    assert _texts(recorded_warnings) == ['a warning nobody has listed']


def test_visualizer_without_save_dir_warning_hidden(recorded_warnings):
    from mmengine.visualization import Visualizer

    def build(name: str) -> None:
        Visualizer(name=name, vis_backends=[dict(type='LocalVisBackend')])

    build('quiet_test_before')
    assert any('please provide the `save_dir`' in t for t in _texts(recorded_warnings))
    recorded_warnings.clear()
    quiet.install_warning_filters()
    build('quiet_test_after')
    assert _texts(recorded_warnings) == []


def test_filters_match_by_module_not_only_by_message(recorded_warnings):
    """The same text attributed to another module is not one of the listed warnings."""
    quiet.install_warning_filters()
    for item in quiet.WARNINGS:
        text = {
            'pkg_resources': 'pkg_resources is deprecated as an API. See ...',
            'Failed to add': "Failed to add <class 'mmengine.visualization.vis_backend."
            "LocalVisBackend'>, please provide the `save_dir` argument.",
            '`isinstance': '`isinstance(treespec, LeafSpec)` is deprecated, use ...',
        }[next(k for k in ('pkg_resources', 'Failed to add', '`isinstance') if k in item.message)]
        warnings.warn_explicit(text, item.category, 'elsewhere.py', 1, module='my_project.code')
    assert len(recorded_warnings) == len(quiet.WARNINGS)


def test_pycocotools_notes_hidden_other_output_kept(coco_photos: Path):
    from pycocotools.coco import COCO

    target = io.StringIO()
    stream = quiet.QuietStream(target)
    with contextlib.redirect_stdout(stream):
        coco = COCO(str(coco_photos / 'annotations' / 'instances.json'))
        print('Done (t=0.5s) is not how our tools end a line', end='')
        print(' -- kept')
        print('a partial line', end='', flush=True)
    assert len(coco.imgs) == 6
    assert target.getvalue() == (
        'Done (t=0.5s) is not how our tools end a line -- kept\na partial line'
    )
    stream.write('Done (t=')  # might still become a pycocotools line: held back ...
    assert target.getvalue().endswith('a partial line')
    stream.release()  # ... until the end, and then written
    assert target.getvalue().endswith('a partial lineDone (t=')


def test_mmengine_records_dropped_from_the_screen_kept_in_the_file(tmp_path: Path):
    from mmengine.fileio import FileClient
    from mmengine.logging import MMLogger

    log_file = tmp_path / 'run.log'
    logger = MMLogger.get_instance('quiet_test_records', log_file=str(log_file))
    screen = io.StringIO()
    for handler in quiet.screen_handlers(logger):
        handler.setStream(screen)
    quiet.quiet_screen_of(logger)
    FileClient.infer_client(None, str(tmp_path))  # mmengine's CheckpointHook does this
    logger.warning('an unlisted warning record')
    for handler in logger.handlers:
        handler.flush()
    assert 'FileClient' not in screen.getvalue()
    assert 'an unlisted warning record' in screen.getvalue()
    assert '"FileClient" will be deprecated' in log_file.read_text()


def test_torch_onnx_registration_notes_dropped():
    name = 'torch.onnx._internal.exporter._registration'
    logger = logging.getLogger(name)
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    before = list(logger.filters)
    try:
        quiet.install_logger_filters()
        logger.warning('torchvision is not installed. Skipping torchvision::nms')
        logger.warning('another exporter message')
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = before
    assert records == ['another exporter message']


def test_every_entry_says_why():
    for item in (*quiet.WARNINGS, *quiet.RECORDS):
        assert len(item.why) > 40, item


def test_mmengine_logger_at_restores_the_level_also_after_an_error():
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    before = logger.level
    assert before != logging.ERROR
    with pytest.raises(RuntimeError), quiet.mmengine_logger_at(logging.ERROR):
        assert logger.level == logging.ERROR
        raise RuntimeError('inside')
    assert logger.level == before
