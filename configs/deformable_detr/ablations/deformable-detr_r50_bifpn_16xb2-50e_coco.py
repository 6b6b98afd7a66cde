# Table 2, row 6: multi-scale deformable attention (K = 4) on BiFPN features.
# The paper does not give the BiFPN's depth: 3 layers (EfficientDet-D0's depth) is our choice. The
# fourth level is a 3x3 stride-2 conv on C5 as in the default model; GroupNorm as in the default
# input projection (BatchNorm statistics are poor at 2 images per GPU).
_base_ = './deformable-detr_r50_msattn-k4_16xb2-50e_coco.py'
model = dict(
    neck=dict(
        _delete_=True,
        type='BiFPNNeck',
        in_channels=[512, 1024, 2048],
        out_channels=256,
        num_outs=4,
        num_repeats=3,
        norm_cfg=dict(type='GN', num_groups=32),
        extra_downsample='conv',
    )
)
