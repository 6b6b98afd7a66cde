# Test-time augmentation for two-stage Deformable DETR, ResNeXt-101 64x4d + DCN (paper Table 3, last
# row: multi-scale + horizontal flip). Use with `tools/test.py CONFIG CHECKPOINT --tta`, which wraps
# `model` in `tta_model` and runs `tta_pipeline` on the test set. The TTA settings do not depend on
# the backbone: to test another variant with TTA, inherit it and copy these two entries.
_base_ = 'deformable-detr-refine-twostage_x101-64x4d-dconv-c3-c5_16xb2-50e_coco.py'

# Every view already yields DETR's top-100 boxes (no NMS inside a view). mmdet's DetTTAModel maps
# the boxes of all views back to the original image, concatenates them and keeps the top 100 after a
# class-wise NMS, which removes the copies of one object found in several views.
tta_model = dict(
    type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)
)

# shorter sides 600 / 800 / 1000 around the single-scale test size (800, longer side <= 1333);
# the largest scale lets the longer side reach 2000
tta_scales = [(1333, 600), (1333, 800), (2000, 1000)]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=scale, keep_ratio=True) for scale in tta_scales],
            [dict(type='RandomFlip', prob=1.0), dict(type='RandomFlip', prob=0.0)],
            [dict(type='LoadAnnotations', with_bbox=True)],
            [
                dict(
                    type='PackDetInputs',
                    meta_keys=(
                        'img_id',
                        'img_path',
                        'ori_shape',
                        'img_shape',
                        'scale_factor',
                        'flip',
                        'flip_direction',
                    ),
                ),
            ],
        ],
    ),
]
