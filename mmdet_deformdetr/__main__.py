"""``python -m mmdet_deformdetr``: print the versions this environment runs with."""

import platform

import mmcv
import mmdet
import mmengine
import torch

import mmdet_deformdetr
from mmdet_deformdetr.ops import mmcv_cuda_available


def main() -> None:
    rows = [
        ('python', platform.python_version()),
        ('torch', torch.__version__),
        ('mmengine', mmengine.__version__),
        ('mmcv', mmcv.__version__),
        ('mmdet', mmdet.__version__),
        ('mmdet_deformdetr', mmdet_deformdetr.__version__),
        ('CUDA available', str(torch.cuda.is_available())),
        ('mmcv CUDA ops', str(mmcv_cuda_available())),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f'{name:<{width}}  {value}')


if __name__ == '__main__':
    main()
