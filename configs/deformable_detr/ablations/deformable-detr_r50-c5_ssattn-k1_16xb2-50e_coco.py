# Table 2, row 1: single-scale input (C5 only, stride 32), single-scale attention, K = 1.
# With one level there is nothing to fuse across levels, so `multi_scale_attention=False`
# (inherited) and True compute the same thing. The official code's `--num_feature_levels 1` build
# also takes C5.
_base_ = './deformable-detr_r50_ssattn-k1_16xb2-50e_coco.py'
model = dict(
    num_feature_levels=1, backbone=dict(out_indices=(3,)), neck=dict(in_channels=[2048], num_outs=1)
)
