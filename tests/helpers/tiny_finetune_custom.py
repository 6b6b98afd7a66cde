# projects/finetune_custom_dataset's config shrunk for a CPU test of tools/train.py: the model
# sizes of tiny_deformdetr_coco.py (so its checkpoints load), ~100 px images, 2 iterations. The
# project's dataset settings (annotation files, image folders, the 5 shape classes) are kept; the
# test generates a small shapes dataset and sets data_root, and load_from is a tiny 80-class COCO
# checkpoint.
_base_ = (
    '../../projects/finetune_custom_dataset/configs/'
    'deformable-detr-refine-twostage_r50_1xb4-24e_custom.py'
)

embed_dims = 32
model = dict(
    num_queries=10,
    backbone=dict(depth=18),  # the project's init_cfg=None: nothing downloaded but load_from
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

image_scale = (160, 96)
train_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='Resize', scale=image_scale, keep_ratio=True),
            dict(type='PackDetInputs'),
        ]
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        indices=2,
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=image_scale, keep_ratio=True),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(
                type='PackDetInputs',
                meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'),
            ),
        ],
    ),
)
test_dataloader = val_dataloader

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2, val_interval=2)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=2)]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(_delete_=True, type='AtomicCheckpointHook', by_epoch=False, interval=2),
)
log_processor = dict(by_epoch=False)
