"""projects/: every project config loads and builds, and the fine-tuning project trains a few
iterations with tools/train.py (tiny model, a small synthetic shapes dataset generated here as the
project README says, from a tiny 80-class COCO checkpoint). Nothing outside the repository is
read."""

import sys

import pytest
import torch
from mmengine.config import Config

from mmdet_deformdetr.datasets import CLASSES
from tests.helpers.tools import REPO_ROOT, TINY_FINETUNE_CONFIG, run_tool

PROJECT_CONFIGS = sorted((REPO_ROOT / 'projects').glob('*/configs/**/*.py'))


def test_projects_have_readme_and_configs():
    projects = [path for path in (REPO_ROOT / 'projects').iterdir() if path.is_dir()]
    assert projects
    for project in projects:
        assert (project / 'README.md').is_file(), project
        assert list(project.glob('configs/**/*.py')), project


@pytest.mark.parametrize('config', PROJECT_CONFIGS, ids=lambda path: path.name)
def test_project_config_builds(config):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    cfg = Config.fromfile(str(config))  # custom_imports loads the plugin
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    assert type(model).__name__ == 'DeformDETR'
    assert model.bbox_head.num_classes == len(cfg.metainfo['classes'])


def test_project_configs_read_nothing_outside_the_repository():
    for config in PROJECT_CONFIGS:
        text = config.read_text()
        assert 'shared/' not in text and '/work/' not in text, config


def offline_env(tmp_path) -> dict:
    """An environment where every download fails at once (a closed local port as the proxy) and
    torch.hub's cache is empty."""
    env = {
        name: 'http://127.0.0.1:9'
        for name in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY')
    }
    env.update(no_proxy='', NO_PROXY='', TORCH_HOME=str(tmp_path / 'torch_home'))
    return env


@pytest.mark.slow
def test_finetune_custom_dataset_trains(python_tool, make_tiny_checkpoint, tmp_path):
    from mmdet_deformdetr.datasets import ShapesConfig, generate_shapes_dataset

    # the project's data, as its README makes it, only smaller: 4 + 2 images of 96 px
    root = generate_shapes_dataset(
        tmp_path / 'shapes_finetune',
        ShapesConfig(num_train=4, num_val=2, img_size=96, min_size=8, max_size=48, max_objects=3),
    )
    data_options = [
        f'{split}_dataloader.dataset.data_root={root}/' for split in ('train', 'val', 'test')
    ]
    data_options += [
        f'{key}.ann_file={root}/annotations/instances_val.json'
        for key in ('val_evaluator', 'test_evaluator')
    ]
    coco_checkpoint = make_tiny_checkpoint('two_stage')  # 80 classes, as a COCO zoo file
    result = python_tool(
        'tools/train.py',
        str(TINY_FINETUNE_CONFIG),
        '--work-dir',
        str(tmp_path / 'work'),
        '--cfg-options',
        f'load_from={coco_checkpoint}',
        *data_options,
        env=offline_env(tmp_path),  # a local copy of the COCO weights: nothing to download
    )

    output = result.output
    assert f'Load checkpoint from {coco_checkpoint}' in output
    # the 80-class classification branches are skipped (size mismatch), the rest is loaded
    assert 'size mismatch for bbox_head.cls_branches' in output
    assert 'Iter(train) [2/2]' in output
    assert 'coco/bbox_mAP:' in output  # validated at the end with the project's 5 classes
    assert f'{root}/annotations/instances_train.json' in output  # the project's file names
    state_dict = torch.load(
        tmp_path / 'work' / 'iter_2.pth', map_location='cpu', weights_only=False
    )['state_dict']
    assert state_dict['bbox_head.cls_branches.0.weight'].shape[0] == len(CLASSES) == 5
    # loaded from the COCO checkpoint, then trained 2 iterations with lr x 0.1: still close
    coco_state = torch.load(coco_checkpoint, map_location='cpu', weights_only=False)['state_dict']
    key = 'transformer.level_embed'
    assert torch.allclose(state_dict[key], coco_state[key], atol=1e-3)


@pytest.mark.slow
def test_finetune_custom_dataset_offline(tmp_path):
    """The project without network (every download goes to a closed port): as shipped, the run
    stops with one message naming the URL, load_from and the switch; with the README's switch
    (--cfg-options load_from=None) it trains one iteration and validates."""
    from mmdet_deformdetr.datasets import ShapesConfig, generate_shapes_dataset

    root = generate_shapes_dataset(
        tmp_path / 'shapes_finetune',
        ShapesConfig(num_train=2, num_val=1, img_size=96, min_size=8, max_size=48, max_objects=3),
    )
    data_options = [
        f'{split}_dataloader.dataset.data_root={root}/' for split in ('train', 'val', 'test')
    ] + [
        f'{key}.ann_file={root}/annotations/instances_val.json'
        for key in ('val_evaluator', 'test_evaluator')
    ]
    offline = offline_env(tmp_path)
    one_iteration = ['train_cfg.max_iters=1', 'train_cfg.val_interval=1']
    command = [
        sys.executable,
        'tools/train.py',
        str(TINY_FINETUNE_CONFIG),
        '--work-dir',
        str(tmp_path / 'work'),
        '--cfg-options',
        *data_options,
        *one_iteration,
    ]

    shipped = run_tool(command, env=offline, check=False)
    url = Config.fromfile(str(TINY_FINETUNE_CONFIG)).load_from
    assert url.startswith('https://download.openmmlab.com/')
    assert shipped.returncode == 1
    error = shipped.output.split('tools/train.py: error: ')[1]
    assert error.startswith(f'load_from = {url}: could not download {url}')
    assert 'To run without it: --cfg-options load_from=None' in error
    assert 'Traceback' not in shipped.output and 'Iter(train)' not in shipped.output

    switched = run_tool([*command, 'load_from=None'], env=offline)
    assert 'Iter(train) [1/1]' in switched.output
    assert 'coco/bbox_mAP:' in switched.output
    assert 'Downloading' not in switched.output
    assert (tmp_path / 'work' / 'iter_1.pth').is_file()
