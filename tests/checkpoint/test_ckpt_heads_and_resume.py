"""Heads that did not load: fine-tuning warns (naming num_classes) and goes on, testing is an error
(check_checkpoint_for_testing, the call tools/test.py makes). And --resume with nothing to resume
from is an error (find_resume_checkpoint, the call tools/train.py makes)."""

import contextlib
import logging
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.runner import Runner, load_checkpoint

from mmdet_deformdetr.checkpoint import (
    CheckpointMismatchError,
    HeadsNotLoadedError,
    NoCheckpointToResumeError,
    check_checkpoint_for_testing,
    find_resume_checkpoint,
)
from tests.helpers.checkpoints import (
    build_official_r50,
    make_official_state_dict,
    save_official_file,
)
from tests.helpers.models import init_weights_quietly, tiny_model_cfg
from tests.helpers.tools import TINY_CONFIG


def build_with_classes(num_classes: int, variant: str = 'plain') -> torch.nn.Module:
    cfg = tiny_model_cfg(variant)
    cfg['bbox_head']['num_classes'] = num_classes
    torch.manual_seed(7)
    model = MODELS.build(cfg)
    init_weights_quietly(model)
    return model


@contextlib.contextmanager
def mmengine_log() -> Iterator[List[Tuple[int, str]]]:
    """(level, message) of everything mmengine's current logger emits inside the block."""
    from mmengine.logging import MMLogger

    records: List[Tuple[int, str]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append((record.levelno, record.getMessage()))

    logger, handler = MMLogger.get_current_instance(), Keep()
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_finetuning_loads_all_but_the_heads_and_warns(make_tiny_file):
    path = make_tiny_file('plain')  # 3 classes
    model = build_with_classes(5)
    heads_before = model.bbox_head.cls_branches[0].weight.detach().clone()
    with mmengine_log() as records:
        load_checkpoint(model, str(path), map_location='cpu')  # no error: fine-tuning
    warnings = [
        message
        for level, message in records
        if level == logging.WARNING and 'classification heads' in message
    ]
    assert len(warnings) == 1
    assert 'have 3 classes, the model num_classes=5 (model.bbox_head.num_classes)' in warnings[0]
    assert 'set model.bbox_head.num_classes=3' in warnings[0]
    saved = torch.load(path, map_location='cpu')['state_dict']
    assert torch.equal(model.transformer.level_embed, saved['transformer.level_embed'])
    assert torch.equal(
        model.bbox_head.reg_branches[0].layers[0].weight,
        saved['bbox_head.reg_branches.0.layers.0.weight'],
    )
    assert torch.equal(model.bbox_head.cls_branches[0].weight, heads_before)


def test_finetuning_through_runner_load_from(make_tiny_file, tmp_path):
    """Runner(load_from=...) of a 3-class checkpoint into a 5-class model: no error."""
    cfg = tiny_model_cfg('plain')
    cfg['bbox_head']['num_classes'] = 5
    runner = Runner(
        model=cfg,
        work_dir=str(tmp_path),
        load_from=str(make_tiny_file('plain')),
        default_scope='mmdet',
    )
    runner.load_or_resume()
    assert runner._has_loaded


def test_testing_with_another_class_count_is_an_error(make_tiny_file):
    path = make_tiny_file('plain')
    with pytest.raises(HeadsNotLoadedError) as error:
        check_checkpoint_for_testing(build_with_classes(80), str(path))
    message = str(error.value)
    assert message.startswith(
        f'{path} has classification heads for 3 classes, the model num_classes=80'
    )
    assert 'Set model.bbox_head.num_classes=3' in message
    assert '--cfg-options model.bbox_head.num_classes=3' in message


def test_testing_check_passes_for_a_checkpoint_that_fits(make_tiny_file):
    report = check_checkpoint_for_testing(
        build_with_classes(3, 'refine'), str(make_tiny_file('refine'))
    )
    assert report.missing == [] and report.unexpected == []


def test_testing_check_accepts_an_already_loaded_checkpoint(make_tiny_file):
    checkpoint = torch.load(make_tiny_file('plain'), map_location='cpu')
    with pytest.raises(HeadsNotLoadedError, match='the checkpoint has classification heads'):
        check_checkpoint_for_testing(build_with_classes(4), checkpoint)


def test_testing_check_remaps_official_coco_ids(official_listing, tmp_path):
    """91 COCO-id heads into an 80-class model are remapped, not an error."""
    path = save_official_file(
        tmp_path / 'official.pth', make_official_state_dict(official_listing['plain']), 'plain'
    )
    report = check_checkpoint_for_testing(build_official_r50('plain'), str(path))
    assert report.source_format == 'official Deformable-DETR'
    assert any('remapped from 91 COCO-id channels' in note for note in report.notes)


@pytest.mark.parametrize('drop', ['neck.', 'transformer.query_embed.'])
def test_testing_check_refuses_missing_weights(drop, make_tiny_file):
    checkpoint = torch.load(make_tiny_file('plain'), map_location='cpu')
    checkpoint['state_dict'] = {
        k: v for k, v in checkpoint['state_dict'].items() if not k.startswith(drop)
    }
    model = build_with_classes(3)
    dropped = [k for k in model.state_dict() if k.startswith(drop)]
    with pytest.raises(CheckpointMismatchError, match='testing would use random values') as error:
        check_checkpoint_for_testing(model, checkpoint)
    assert f'only in model ({len(dropped)}): {dropped[0]}' in str(error.value)


def test_testing_check_refuses_other_query_count(make_tiny_file):
    path = make_tiny_file('plain', num_queries=20)
    with pytest.raises(
        CheckpointMismatchError,
        match=r'transformer\.query_embed\.weight: '
        r'checkpoint \(20, 64\) vs model \(12, 64\)',
    ):
        check_checkpoint_for_testing(build_with_classes(3), str(path))


@pytest.mark.slow
def test_the_call_tools_test_py_makes(tmp_path):
    """``runner = Runner.from_cfg(cfg); check_checkpoint_for_testing(runner.model,
    args.checkpoint)`` with the tiny tool config (80 classes) and ``--cfg-options
    model.bbox_head.num_classes=3``; a wrapper (DDP / TTA keep the detector as ``.module``)."""
    cfg = Config.fromfile(str(TINY_CONFIG))
    torch.manual_seed(0)
    path = tmp_path / 'coco80.pth'
    torch.save({'state_dict': MODELS.build(cfg.model).state_dict()}, path)
    cfg.merge_from_dict({'model.bbox_head.num_classes': 3})
    cfg.work_dir, cfg.load_from = str(tmp_path / 'work'), str(path)
    runner = Runner.from_cfg(cfg)
    with pytest.raises(HeadsNotLoadedError, match='80 classes, the model num_classes=3'):
        check_checkpoint_for_testing(runner.model, cfg.load_from)

    class Wrapper(torch.nn.Module):
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    with pytest.raises(HeadsNotLoadedError, match='num_classes=3'):
        check_checkpoint_for_testing(Wrapper(runner.model), cfg.load_from)


def test_resume_finds_what_checkpoint_hook_recorded(tmp_path):
    (tmp_path / 'iter_2.pth').write_bytes(b'x')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_2.pth'))
    assert find_resume_checkpoint(tmp_path) == str(tmp_path / 'iter_2.pth')
    (tmp_path / 'last_checkpoint').write_text('iter_2.pth\n')  # a name relative to the work dir
    assert find_resume_checkpoint(tmp_path) == str(tmp_path / 'iter_2.pth')


def test_resume_without_work_dir(tmp_path):
    with pytest.raises(NoCheckpointToResumeError) as error:
        find_resume_checkpoint(tmp_path / 'never_trained')
    message = str(error.value)
    assert message.startswith(
        '--resume found nothing to resume from: the work dir '
        f'{tmp_path / "never_trained"} does not exist'
    )
    assert 'leave out --resume' in message


def test_resume_in_empty_work_dir(tmp_path):
    with pytest.raises(
        NoCheckpointToResumeError,
        match=f'{tmp_path} has no last_checkpoint file'
        r'.*there is no \*\.pth file there',
    ):
        find_resume_checkpoint(tmp_path)


def test_resume_lists_checkpoints_when_last_checkpoint_is_missing(tmp_path):
    import os

    for index, name in enumerate(['iter_2.pth', 'iter_4.pth']):
        (tmp_path / name).write_bytes(b'x')
        os.utime(tmp_path / name, (index + 1, index + 1))
    with pytest.raises(NoCheckpointToResumeError) as error:
        find_resume_checkpoint(tmp_path)
    message = str(error.value)
    assert 'checkpoints there: iter_2.pth, iter_4.pth' in message
    assert f'--resume {tmp_path / "iter_4.pth"}' in message


@pytest.mark.parametrize(
    'content, expected',
    [
        ('', 'last_checkpoint is empty'),
        ('/nowhere/iter_8.pth', 'names /nowhere/iter_8.pth, which does not exist'),
    ],
)
def test_resume_with_a_stale_last_checkpoint(content, expected, tmp_path: Path):
    (tmp_path / 'last_checkpoint').write_text(content)
    with pytest.raises(NoCheckpointToResumeError, match=expected):
        find_resume_checkpoint(tmp_path)


def test_mmengine_alone_would_start_from_iteration_zero(tmp_path):
    """Why the check exists: mmengine's auto-resume in an empty work dir loads nothing."""
    runner = Runner(
        model=tiny_model_cfg('plain'), work_dir=str(tmp_path), resume=True, default_scope='mmdet'
    )
    runner.load_or_resume()
    assert not runner._has_loaded
