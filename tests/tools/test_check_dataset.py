"""tools/misc/check_dataset.py on small broken datasets built from tests/data/coco_photos: every
defect reported with its file or annotation, exit code 1 on problems, 0 on a clean dataset."""

import subprocess
import sys

import pytest

from tests.helpers.broken_coco import BOX_DEFECTS, IMAGE_DEFECTS, make_coco
from tests.helpers.tools import REPO_ROOT, TINY_CONFIG

TOOL = REPO_ROOT / 'tools' / 'misc' / 'check_dataset.py'

#: image defect -> problem key reported (header mode); the re-encoded PNGs and the background
#: image are fine
IMAGE_FINDINGS = {
    'corrupt': 'undecodable_image',
    'zero_byte': 'empty_image',
    'truncated': 'truncated_image',
    'missing': 'missing_image',
    'size_mismatch': 'size_mismatch',
}
BOX_FINDINGS = {
    'zero_width': ('dropped', 'degenerate_box', 1001),
    'negative_height': ('dropped', 'degenerate_box', 1002),
    'outside': ('dropped', 'outside_image', 1003),
    'partly_outside': ('note', 'partly_outside', 1004),
    'unknown_category': ('dropped', 'unknown_category', 1005),
    'zero_area': ('dropped', 'zero_area', 1006),
}


def run_check(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ['nice', '-n', '5', sys.executable, str(TOOL), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    result.output = result.stdout + result.stderr
    return result


@pytest.fixture(scope='module')
def broken(tmp_path_factory, coco_photos):
    return make_coco(
        tmp_path_factory.mktemp('broken'), coco_photos, list(IMAGE_DEFECTS), list(BOX_DEFECTS)
    )


def bare_args(root, *extra):
    return (
        '--ann-file',
        str(root / 'annotations' / 'instances.json'),
        '--img-dir',
        str(root / 'images'),
        *extra,
    )


@pytest.mark.slow
def test_reports_every_defect_with_its_file_and_fails(broken):
    """The tool as a user runs it (a process, so slow: mmdet's imports)."""
    result = run_check(*bare_args(broken, '--nproc', '2'))
    assert result.returncode == 1, result.output
    output = result.output
    assert '11 images, 40 annotations checked.' in output
    for defect, problem in IMAGE_FINDINGS.items():
        assert f'[error] {problem} x1: ' in output
        assert str(broken / 'images' / IMAGE_DEFECTS[defect][0]) in output
    for defect, (severity, problem, ann_id) in BOX_FINDINGS.items():
        assert f'[{severity}] {problem} x' in output
        detail = (
            'category_id 999' if defect == 'unknown_category' else f'bbox {BOX_DEFECTS[defect][0]}'
        )
        assert f'annotation id {ann_id} (image 000000397133.jpg): {detail}' in output
    assert '[note] no_boxes x1: ' in output and '    background.jpg' in output
    assert '5 error(s) (training stops or skips the image), 5 box(es) training drops' in output
    for fine in ('gray.png', 'rgba.png', 'deep.png'):
        assert fine not in output
    assert 'images/s, 2 processes' in output
    assert '11/11' in output  # mmengine's progress bar


def test_decode_mode_finds_the_same_images(broken):
    from mmdet_deformdetr.datasets.dataset_report import check_coco

    report = check_coco(
        str(broken / 'annotations' / 'instances.json'),
        str(broken / 'images'),
        decode=True,
        progress=False,
    )
    found = {
        key: items for key, items in report.findings.items() if report.severity(key) == 'error'
    }
    # a truncated JPEG does not decode: OpenCV reports it as undecodable
    assert {key: len(items) for key, items in found.items()} == {
        'undecodable_image': 2,
        'empty_image': 1,
        'missing_image': 1,
        'size_mismatch': 1,
    }
    assert sorted(p.rsplit('/', 1)[1] for p in found['undecodable_image']) == [
        'corrupt.jpg',
        'truncated.jpg',
    ]


def test_config_mode_reads_the_dataloader_dataset(broken, capsys):
    """The tiny test config with its data_root pointed at the broken dataset (--cfg-options, as
    for tools/train.py); classes are COCO's 80 (the dataset class's default)."""
    from tools.misc.check_dataset import main

    assert (
        main(
            [
                str(TINY_CONFIG),
                '--split',
                'val',
                '--nproc',
                '1',
                '--no-progress',
                '--cfg-options',
                f'val_dataloader.dataset.data_root={broken}/',
            ]
        )
        == 1
    )
    output = capsys.readouterr().out
    # which dataloader's file is checked, and that the test dataloader reads another one
    assert output.startswith(
        '--split val: the annotation file of val_dataloader.dataset (what validation during '
        'training reads); test_dataloader reads data/coco/annotations/instances.json '
        '(--split test)\n'
    ), output[:400]
    assert (
        f'checking {broken}/annotations/instances.json with images in {broken}/images/, '
        "classes ('person', 'bicycle'" in output
    )
    assert '5 error(s)' in output


@pytest.mark.parametrize('strict,code', [(False, 0), (True, 1)])
def test_dropped_boxes_fail_only_with_strict(tmp_path, coco_photos, strict, code):
    from tools.misc.check_dataset import main

    root = make_coco(tmp_path, coco_photos, box_defects=['zero_width'])
    args = list(bare_args(root, '--nproc', '1', '--no-progress')) + (['--strict'] if strict else [])
    assert main(args) == code


def test_clean_dataset_passes(coco_photos, capsys):
    from tools.misc.check_dataset import main

    assert main(list(bare_args(coco_photos, '--nproc', '1', '--no-progress'))) == 0
    output = capsys.readouterr().out
    assert '6 images, 30 annotations checked.' in output
    assert (
        '0 error(s) (training stops or skips the image), 0 box(es) training drops, '
        'no problem found.' in output
    )


@pytest.mark.parametrize(
    'classes,problem',
    [
        (
            ['car', 'person'],
            "[error] classes_order x1: metainfo.classes is not in the file's category "
            "order (mmdet numbers labels in that order)\n    ('car', 'person'); in "
            "the file's order: ('person', 'car')",
        ),
        (
            ['person', 'unicorn'],
            '[error] classes_not_in_file x1: metainfo.classes names categories '
            "the file lacks\n    ['unicorn']",
        ),
    ],
)
def test_classes_that_do_not_fit_the_file(coco_photos, capsys, classes, problem):
    from tools.misc.check_dataset import main

    assert (
        main(list(bare_args(coco_photos, '--nproc', '1', '--no-progress', '--classes', *classes)))
        == 1
    )
    assert problem in capsys.readouterr().out


def test_unreadable_annotation_file(tmp_path, capsys):
    from tools.misc.check_dataset import main

    (tmp_path / 'bad.json').write_text('{"images": [')
    assert (
        main(
            ['--ann-file', str(tmp_path / 'bad.json'), '--img-dir', str(tmp_path), '--no-progress']
        )
        == 1
    )
    assert '[error] unreadable_file x1: ' in capsys.readouterr().out


@pytest.mark.parametrize(
    'args,message',
    [
        ([], 'give either CONFIG or --ann-file'),
        (['--ann-file', 'a.json'], '--ann-file needs --img-dir'),
    ],
)
def test_bad_arguments_exit_2(args, message, capsys):
    from tools.misc.check_dataset import main

    with pytest.raises(SystemExit) as error:
        main(args)
    assert error.value.code == 2 and message in capsys.readouterr().err
