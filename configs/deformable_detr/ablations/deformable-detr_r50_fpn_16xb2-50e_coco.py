# Table 2, row 5: multi-scale deformable attention (K = 4) on FPN features.
# mmdet's FPN replaces the per-level 1x1 projection. Its fourth level is a 3x3 stride-2 conv on C5
# ('on_input'), the same source as the default model's C6, so the top-down pathway (and FPN's 3x3
# output convs) are the only change; GroupNorm as in the default input projection.
_base_ = './deformable-detr_r50_msattn-k4_16xb2-50e_coco.py'
model = dict(
    neck=dict(
        _delete_=True,
        type='FPN',
        in_channels=[512, 1024, 2048],
        out_channels=256,
        num_outs=4,
        add_extra_convs='on_input',
        norm_cfg=dict(type='GN', num_groups=32),
    )
)
