"""The package outside the repository: where the shipped configs are found (``configs_root``,
``find_config``), the model index in OpenMMLab's format, and a built wheel installed into a folder
of its own, used from a folder outside the checkout."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

import mmdet_deformdetr
from mmdet_deformdetr import configs_root, find_config
from tests.helpers.tools import REPO_ROOT

PRIMITIVE = 'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'
# the configs of the paper's Table 1, with the official checkpoints' COCO val box AP (official
# README; configs/deformable_detr/README.md)
TABLE_1 = {
    'configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py': 44.5,
    'configs/deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py': 46.2,
    'configs/deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py': 46.9,
}


def test_configs_root_of_a_checkout_is_its_configs_folder():
    assert configs_root() == REPO_ROOT / 'configs'
    assert mmdet_deformdetr.configs_root is configs_root


@pytest.mark.parametrize('name', [PRIMITIVE, f'configs/{PRIMITIVE}'])
def test_find_config_by_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from any folder
    assert find_config(name) == REPO_ROOT / 'configs' / PRIMITIVE


def test_find_config_prefers_an_existing_file(tmp_path, monkeypatch):
    own = tmp_path / 'configs' / PRIMITIVE
    own.parent.mkdir(parents=True)
    own.write_text('')
    monkeypatch.chdir(tmp_path)
    assert find_config(f'configs/{PRIMITIVE}') == Path(f'configs/{PRIMITIVE}')


def test_find_config_names_both_places_when_missing():
    with pytest.raises(FileNotFoundError, match=r"'nope\.py': no such file, and no shipped config"):
        find_config('nope.py')


def test_configs_root_without_configs_says_how_to_install(monkeypatch, tmp_path):
    from mmdet_deformdetr import shipped_configs

    monkeypatch.setattr(shipped_configs, '_PACKAGE_DIR', tmp_path / 'site' / 'mmdet_deformdetr')
    with pytest.raises(FileNotFoundError, match=r'pip install \.'):
        configs_root()


def test_mmengine_package_prefix_does_not_reach_plugins(tmp_path):
    """mmengine resolves `package::path` only for the OpenMMLab packages in its own table
    (mmengine.config.utils.MODULE2PACKAGE), so a config cannot inherit
    `mmdet_deformdetr::...`; docs/installation.md says what to do instead. If mmengine lifts
    this, the docs should say so."""
    from mmengine.config import Config

    config = tmp_path / 'mine.py'
    config.write_text(f"_base_ = 'mmdet_deformdetr::{PRIMITIVE}'\n")
    with pytest.raises(AssertionError, match='does not support to load mmdet_deformdetr config'):
        Config.fromfile(str(config))


def test_external_config_index_read_once_gives_mmengine_answers(monkeypatch):
    """Inside the block each (package, config) lookup reaches mmengine once, and every config
    parses to what mmengine alone gives; outside it mmengine's own function is back."""
    import inspect

    from mmengine.config import Config, utils
    from mmengine.utils import get_installed_path

    from mmdet_deformdetr.shipped_configs import external_config_index_read_once

    genuine = inspect.unwrap(utils._get_cfg_metainfo)  # the suite runs inside such a block too
    calls = []

    def counted(package_path: str, cfg_path: str) -> dict:
        calls.append(cfg_path)
        return genuine(package_path, cfg_path)

    monkeypatch.setattr(utils, '_get_cfg_metainfo', counted)
    names = [PRIMITIVE, 'deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py']
    alone = [Config.fromfile(str(find_config(name))).to_dict() for name in names]
    looked_up = sorted(set(calls))
    assert len(calls) == 2 * len(looked_up)  # both configs look each mmdet base up
    calls.clear()
    with external_config_index_read_once():
        for _ in range(2):
            assert [Config.fromfile(str(find_config(name))).to_dict() for name in names] == alone
        assert sorted(calls) == looked_up  # once each
        with pytest.raises(ValueError, match='Expected configs') as inside:
            utils._get_cfg_metainfo(get_installed_path('mmdet'), 'no-such-config')
    assert utils._get_cfg_metainfo is counted
    with pytest.raises(ValueError) as outside:
        utils._get_cfg_metainfo(get_installed_path('mmdet'), 'no-such-config')
    assert str(inside.value) == str(outside.value)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def metafile_models() -> Dict[str, dict]:
    """Config path -> model entry, over every metafile the model index imports."""
    index = load_yaml(REPO_ROOT / 'model-index.yml')
    models: Dict[str, dict] = {}
    for metafile in index['Import']:
        for model in load_yaml(REPO_ROOT / metafile).get('Models', []):
            assert model['Config'] not in models, f'{model["Config"]} has two entries'
            models[model['Config']] = model
    return models


def shipped_configs() -> List[str]:
    """Every config under configs/ except `_base_`-only fragments (OpenMMLab keeps those in
    `_base_/` folders), as paths relative to the repository."""
    return [
        str(path.relative_to(REPO_ROOT))
        for path in sorted((REPO_ROOT / 'configs').rglob('*.py'))
        if '_base_' not in path.parts and '__pycache__' not in path.parts
    ]


def test_model_index_imports_one_metafile_per_config_folder():
    index = load_yaml(REPO_ROOT / 'model-index.yml')
    folders = sorted({str(Path(config).parent) for config in shipped_configs()})
    assert sorted(str(Path(path).parent) for path in index['Import']) == folders
    assert all(Path(path).name == 'metafile.yml' for path in index['Import'])


def test_every_metafile_entry_names_a_config_and_every_config_has_one():
    models = metafile_models()
    for config in models:
        assert (REPO_ROOT / config).is_file(), config
    assert sorted(models) == shipped_configs()


def test_metafile_entries_in_mmdet_format():
    collections = {
        collection['Name']
        for path in (REPO_ROOT / 'configs').rglob('metafile.yml')
        for collection in load_yaml(path).get('Collections', [])
    }
    names = set()
    for config, model in metafile_models().items():
        assert model['Name'] == Path(config).stem and model['Name'] not in names
        names.add(model['Name'])
        assert model['In Collection'] in collections
        assert isinstance(model['Metadata'], dict)
        if config in TABLE_1:
            (result,) = model['Results']
            assert result == {
                'Task': 'Object Detection',
                'Dataset': 'COCO',
                'Metrics': {'box AP': TABLE_1[config]},
            }
            assert model['Weights'].startswith('https://drive.google.com/file/d/')
        else:
            assert 'Results' not in model and 'Weights' not in model, config


def test_metafile_weights_are_the_ones_the_readme_lists():
    readme = (REPO_ROOT / 'README.md').read_text()
    weights = [model['Weights'] for model in metafile_models().values() if 'Weights' in model]
    assert len(weights) == len(TABLE_1)
    for url in weights:
        assert f'({url})' in readme, url


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the files a build reads (so nothing else of the checkout, and no
    build folder in it, can make it pass)."""
    source = tmp_path / 'source'
    for name in (
        'pyproject.toml',
        'setup.py',
        'MANIFEST.in',
        'README.md',
        'LICENSE',
        'model-index.yml',
    ):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / name, source / name)
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '*.so', '*.egg-info')
    for folder in ('mmdet_deformdetr', 'configs'):
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=ignore)
    subprocess.run(
        [
            sys.executable,
            '-m',
            'pip',
            'wheel',
            '--no-deps',
            '--no-build-isolation',
            '-q',
            '-w',
            str(tmp_path / 'dist'),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / 'dist').glob('mmdet_deformdetr-*.whl')
    return wheel


USE_OUTSIDE_THE_CHECKOUT = f"""
import mmdet_deformdetr, sys
from mmengine.config import Config
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmdet_deformdetr.checkpoint.mismatch import shipped_configs_that_fit
from mmdet_deformdetr.checkpoint.variant import variant_of_config

print('package', mmdet_deformdetr.__file__)
root = mmdet_deformdetr.configs_root()
print('configs', root)
register_all_modules()
cfg = Config.fromfile(mmdet_deformdetr.find_config({PRIMITIVE!r}))
cfg.model.backbone.init_cfg = None
model = MODELS.build(cfg.model)
print('built', type(model).__name__, sum(p.numel() for p in model.parameters()))
print('fit', shipped_configs_that_fit(variant_of_config(cfg.model)))
"""


@pytest.mark.slow
def test_wheel_works_outside_the_repository(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        f'mmdet_deformdetr/.mim/{path.relative_to(REPO_ROOT)}'
        for path in (REPO_ROOT / 'configs').rglob('*')
        if path.is_file() and '__pycache__' not in path.parts
    }
    assert shipped <= names, sorted(shipped - names)
    assert 'mmdet_deformdetr/.mim/model-index.yml' in names
    assert any(name.endswith('.dist-info/licenses/LICENSE') for name in names)
    for source in ('ms_deform_attn_cpu.cpp', 'bilinear.h'):
        assert f'mmdet_deformdetr/ops/csrc/{source}' in names

    target = tmp_path / 'target'
    subprocess.run(
        [
            sys.executable,
            '-m',
            'pip',
            'install',
            '--no-deps',
            '-q',
            '--target',
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    outside = tmp_path / 'elsewhere'
    outside.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, '-c', USE_OUTSIDE_THE_CHECKOUT],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(' ', 1) for line in result.stdout.splitlines())
    assert lines['package'].startswith(str(target))  # not the checkout's editable install
    assert lines['configs'] == str(target / 'mmdet_deformdetr' / '.mim' / 'configs')
    assert lines['built'].startswith('DeformDETR ')
    # the checkpoint mismatch message's list of configs that fit is not empty outside the checkout
    assert f'configs/{PRIMITIVE}' in lines['fit']
