"""Build step of the wheel: ship the configs inside the package. Everything else about the package
(metadata, dependencies, package data) is in ``pyproject.toml``.

OpenMMLab packages carry their configs and model index in ``<package>/.mim/`` (mmdet copies them
there in its ``setup.py``), so that an installed package, without its repository, still has them:
``mmdet_deformdetr.configs_root()`` finds ``.mim/configs``. The copy is made into the build folder
only; an editable install (``pip install -e .``) reads the checkout's ``configs/`` directly.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# repository path -> path under mmdet_deformdetr/.mim/
MIM_FILES = {'configs': 'configs', 'model-index.yml': 'model-index.yml'}


class BuildPyWithMim(build_py):
    """``build_py``, then the configs and the model index copied into ``mmdet_deformdetr/.mim``."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        mim = Path(self.build_lib) / 'mmdet_deformdetr' / '.mim'
        for source, target in MIM_FILES.items():
            source_path, target_path = ROOT / source, mim / target
            if target_path.is_dir():
                shutil.rmtree(target_path)  # files removed from configs/ must not linger
            if source_path.is_dir():
                shutil.copytree(
                    source_path, target_path, ignore=shutil.ignore_patterns('__pycache__', '*.pyc')
                )
            else:
                target_path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source_path, target_path)


setup(cmdclass={'build_py': BuildPyWithMim})
