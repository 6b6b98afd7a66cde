# A Deformable DETR small enough for multi-process CPU tests of tools/*.py and tools/dist_*.sh:
# our primitive config with a ResNet-18 (no pretrained weights), 32-dim embeddings, 1 + 1 layers,
# 10 queries, ~100 px images and a 2-iteration schedule that saves a checkpoint. Variants come from
# the command line (--cfg-options model.with_box_refine=True model.as_two_stage=True), and so does
# the data root (the tests pass tests/data/coco_photos: data_root=... for the three dataloaders and
# the evaluators' ann_file), so nothing here depends on where the data lives.
_base_ = '../../configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'

embed_dims = 32
model = dict(
    num_queries=10,
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(
        in_channels=[128, 256, 512], out_channels=embed_dims, norm_cfg=dict(type='GN', num_groups=8)
    ),
    transformer=dict(
        embed_dims=embed_dims,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        feedforward_channels=64,
        enc_num_points=2,
        dec_num_points=2,
    ),
    test_cfg=dict(max_per_img=10),
)

image_scale = (160, 96)  # (longer side, shorter side), keep_ratio
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'),
    ),
]
train_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        ann_file='annotations/instances.json',
        data_prefix=dict(img='images/'),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        ann_file='annotations/instances.json',
        data_prefix=dict(img='images/'),
        indices=4,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader

# validation only in the tests that ask for it (tools/test.py, tools/dist_test.sh)
train_cfg = dict(
    _delete_=True, type='IterBasedTrainLoop', max_iters=2, val_begin=1000, val_interval=1000
)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=2)]
default_hooks = dict(
    logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval=2)
)  # the primitive's AtomicCheckpointHook
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
