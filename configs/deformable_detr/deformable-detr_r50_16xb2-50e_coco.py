# Deformable DETR, ResNet-50, 50 epochs on COCO 2017 (Zhu et al., ICLR 2021, Table 1 row
# "Deformable DETR"). The primitive config of the family: it holds the whole model; every variant
# and ablation overrides a line or two of it through `_base_`.
_base_ = [
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmdet_deformdetr'], allow_failed_imports=False)

model = dict(
    type='DeformDETR',
    num_queries=300,
    num_feature_levels=4,  # must equal neck.num_outs (checked when the detector is built)
    with_box_refine=False,
    as_two_stage=False,
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1,
    ),
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(1, 2, 3),  # C3, C4, C5 (strides 8, 16, 32)
        frozen_stages=1,  # stem + layer1 frozen, as the official code
        norm_cfg=dict(type='BN', requires_grad=False),  # frozen BN
        norm_eval=True,
        style='pytorch',
        # torchvision's ImageNet ResNet-50 (what the official code trains from). mmengine resolves
        # 'torchvision://resnet50' by importing torchvision, which this project neither needs nor
        # installs, so the checkpoint is named by its direct URL (the same file).
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://download.pytorch.org/models/resnet50-0676ba61.pth',
        ),
    ),
    # the official input_proj: 1x1 conv (with bias) + GN per level, plus a 3x3 stride-2 conv + GN
    # on C5 for the fourth level (stride 64)
    neck=dict(
        type='ChannelMapper',
        in_channels=[512, 1024, 2048],
        kernel_size=1,
        out_channels=256,
        bias=True,
        act_cfg=None,
        norm_cfg=dict(type='GN', num_groups=32),
        num_outs=4,
    ),
    positional_encoding=dict(normalize=True, offset=-0.5, temperature=10000),
    transformer=dict(
        type='DeformableDetrTransformer',
        embed_dims=256,
        num_heads=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        feedforward_channels=1024,
        dropout=0.1,
        activation='relu',
        enc_num_points=4,  # K, sampling points per head per level
        dec_num_points=4,
        multi_scale_attention=True,
    ),
    bbox_head=dict(
        type='DeformDETRHead',
        num_classes=80,
        sync_cls_avg_factor=True,
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0),
    ),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0),
            ],
        )
    ),
    test_cfg=dict(max_per_img=100),
)

# DETR's augmentation, used by the paper: horizontal flip, then either a multi-scale resize of the
# shorter side to 480..800 (step 32, longer side <= 1333), or a resize of the shorter side to
# 400/500/600 (no limit on the longer side), a random crop of 384..600 pixels and the multi-scale
# resize. mmdet's Resize scale is (long, short) with keep_ratio; 4200 stands for "no limit".
multi_scale_resize = dict(
    type='RandomChoiceResize',
    scales=[(1333, short_side) for short_side in range(480, 801, 32)],
    keep_ratio=True,
)
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [multi_scale_resize],
            [
                dict(
                    type='RandomChoiceResize',
                    scales=[(4200, 400), (4200, 500), (4200, 600)],
                    keep_ratio=True,
                ),
                # DETR's RandomSizeCrop keeps crops without any box, hence allow_negative_crop
                dict(
                    type='RandomCrop',
                    crop_type='absolute_range',
                    crop_size=(384, 600),
                    allow_negative_crop=True,
                ),
                multi_scale_resize,
            ],
        ],
    ),
    dict(type='PackDetInputs'),
]
# Bad data: mmdet's CocoDataset plus checks that name the file and the fix (missing,
# empty or corrupt images, invalid boxes, unknown categories, classes out of the file's order;
# mmdet_deformdetr/datasets/checked_coco.py, README "What happens with bad data"), and a check of
# model.bbox_head.num_classes against the data's classes when the run starts.
# The official code trains on every image, including those without annotations.
train_dataloader = dict(
    dataset=dict(
        type='CheckedCocoDataset', filter_cfg=dict(filter_empty_gt=False), pipeline=train_pipeline
    )
)
# test: shorter side 800, longer side <= 1333, as the base test pipeline already does
val_dataloader = dict(dataset=dict(type='CheckedCocoDataset'))
test_dataloader = val_dataloader
custom_hooks = [dict(type='CheckNumClassesHook')]

optim_wrapper = dict(
    type='OptimWrapper',
    # mmengine's param groups merged by equal settings (the same update; a cheaper step)
    constructor='GroupedOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    # the official code trains the backbone and the linear layers that predict sampling locations
    # (`sampling_offsets`, `reference_points`) with a 10x smaller learning rate
    paramwise_cfg=dict(
        custom_keys={
            'backbone': dict(lr_mult=0.1),
            'sampling_offsets': dict(lr_mult=0.1),
            'reference_points': dict(lr_mult=0.1),
        }
    ),
)

max_epochs = 50
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# no warm-up; lr x 0.1 after epoch 40
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[40], gamma=0.1)
]

# 16 GPUs x 2 images; `--auto-scale-lr` rescales the lr for another total batch size
auto_scale_lr = dict(base_batch_size=32)

# a two-day run must survive faults (mmdet_deformdetr/engine/): checkpoints are written to a
# temporary file and renamed into place, `last_checkpoint` after them, outdated ones deleted last,
# so a kill mid-save loses nothing; training stops at the first NaN / Inf loss term, gradient norm
# or weight, before it is saved; on SIGTERM / SIGUSR1 / SIGINT (preemption, Slurm's time-limit
# warning, Ctrl-C) the iteration in flight finishes, its checkpoint is saved and the process exits
# with 75 (docs/robustness.md). Children override the checkpoint settings, not the types.
default_hooks = dict(
    checkpoint=dict(type='AtomicCheckpointHook', interval=1),
    check_finite=dict(type='StopOnNonFiniteHook'),
    preemption=dict(type='PreemptionHook'),
)
