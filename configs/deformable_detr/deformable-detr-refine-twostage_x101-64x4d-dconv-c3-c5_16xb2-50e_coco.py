# Two-stage Deformable DETR with ResNeXt-101 64x4d + deformable convolutions in stages C3-C5
# (paper Table 3, "ResNeXt-101 + DCN").
_base_ = 'deformable-detr-refine-twostage_x101-64x4d_16xb2-50e_coco.py'
model = dict(
    backbone=dict(
        dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True),
    )
)
