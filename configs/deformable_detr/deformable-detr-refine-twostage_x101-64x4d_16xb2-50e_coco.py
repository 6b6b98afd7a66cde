# Two-stage Deformable DETR with ResNeXt-101 64x4d (paper Table 3).
_base_ = 'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'
# 'open-mmlab://resnext101_64x4d' (mmengine's table, no torchvision import): the ImageNet weights
# that mmdet's ResNeXt configs use
model = dict(
    backbone=dict(
        type='ResNeXt',
        depth=101,
        groups=64,
        base_width=4,
        init_cfg=dict(checkpoint='open-mmlab://resnext101_64x4d'),
    )
)
