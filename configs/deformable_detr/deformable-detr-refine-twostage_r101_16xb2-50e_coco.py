# Two-stage Deformable DETR with ResNet-101 (paper Table 3).
_base_ = 'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'
# torchvision's ImageNet ResNet-101 by direct URL: 'torchvision://' would import torchvision
model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(checkpoint='https://download.pytorch.org/models/resnet101-63fe2227.pth'),
    )
)
