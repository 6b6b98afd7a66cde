# Demo: a SMALL Deformable DETR (two-stage + iterative box refinement) trained from scratch on CPU
# on the synthetic shapes dataset (mmdet_deformdetr/datasets/synthetic_shapes.py). Run it with
#
#   bash tools/run_demo.sh [--quick | --long | --iters N] [--cfg-options KEY=VALUE ...]
#
# which generates the data under data/shapes_seed0/, trains with MMEngine's Runner, evaluates with
# CocoMetric and draws predictions and curves into work_dirs/demo/ (tools/demo.py --work-dir
# changes it; see tools/demo.py).
#
# What is small, and why (no pretrained weights offline; the budget is 600 s on 2 CPU cores). How
# each choice was measured, and what was tried and not kept: docs/demo_recipe.md.
#   * ResNet-18 at half width (base_channels=32: ~4x fewer backbone FLOPs) from scratch: BN
#     trained (norm_eval=False, frozen_stages=-1), the backbone at the full learning rate (the 0.1
#     multiplier of the COCO configs is for an ImageNet backbone);
#   * 3 feature levels (C3-C5, strides 8/16/32), 128-d, 8 heads, K=4, 2 encoder + 4 decoder
#     layers, 100 queries;
#   * the generated 256 px images resized to 224 px, batch 6, AdamW 1.5e-3 (torch's fused
#     implementation, one param group per distinct setting: GroupedOptimWrapperConstructor),
#     warm-up then cosine decay, gradient clip 1.0, no dropout;
#   * bf16 autocast where the CPU computes bfloat16 natively (tools/demo.py --precision auto).
#
# ANY COCO-format dataset works through --cfg-options (tools/demo.py then uses the val loader as
# the test loader, points the evaluator at the val annotations and sets num_classes from the train
# classes), e.g.
#
#   bash tools/run_demo.sh --cfg-options \
#     train_dataloader.dataset.data_root=data/mine/ val_dataloader.dataset.data_root=data/mine/ \
#     train_dataloader.dataset.ann_file=annotations/train.json \
#     val_dataloader.dataset.ann_file=annotations/val.json \
#     train_dataloader.dataset.data_prefix.img=images/train/ \
#     val_dataloader.dataset.data_prefix.img=images/val/ \
#     "train_dataloader.dataset.metainfo.classes=[cat,dog]" \
#     "val_dataloader.dataset.metainfo.classes=[cat,dog]"
#
# (--data-root DIR of tools/demo.py sets both data roots and skips the shapes generation. The
# top-level variables below are read when the file is parsed: overriding `data_root=` or
# `img_scale=` on the command line changes nothing; override the keys that use them, e.g.
# train_dataloader.dataset.pipeline.2.scale="(320,320)" for the train Resize.)
_base_ = '../deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'

classes = ('circle', 'square', 'triangle', 'star', 'hexagon')
data_root = 'data/shapes_seed0/'
img_scale = (224, 224)  # the generated images are 256 x 256
embed_dims = 128
max_iters = 1650  # tools/demo.py rewrites the schedule for --quick / --long / --iters
warmup_iters = 300  # a long warm-up: see docs/demo_recipe.md

model = dict(
    num_queries=100,
    num_feature_levels=3,
    channels_last=True,  # oneDNN's faster CPU convolutions and max-pool
    backbone=dict(
        depth=18,
        base_channels=32,  # half-width ResNet-18: ~4x fewer backbone FLOPs, the CPU budget's key
        out_indices=(1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None,
    ),  # from scratch: nothing to download
    neck=dict(in_channels=[64, 128, 256], out_channels=embed_dims, num_outs=3),
    transformer=dict(
        embed_dims=embed_dims,
        num_heads=8,
        num_encoder_layers=2,
        num_decoder_layers=4,
        feedforward_channels=512,
        dropout=0.0,
    ),
    bbox_head=dict(num_classes=len(classes)),
    test_cfg=dict(max_per_img=100),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'),
    ),
]
train_dataloader = dict(
    batch_size=6,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=None,  # no aspect-ratio grouping needed for square images
    dataset=dict(
        type='CheckedCocoDataset',
        data_root=data_root,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        metainfo=dict(classes=classes),
        filter_cfg=dict(filter_empty_gt=False),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        type='CheckedCocoDataset',
        data_root=data_root,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        metainfo=dict(classes=classes),
        test_mode=True,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric='bbox',
    classwise=True,
    format_only=False,
)
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1.5e-3, weight_decay=1e-4, fused=True),
    clip_grad=dict(max_norm=1.0, norm_type=2),
    paramwise_cfg=dict(
        custom_keys={
            'backbone': dict(lr_mult=1.0),  # from scratch: no reason to slow it down
            'sampling_offsets': dict(lr_mult=0.1),
            'reference_points': dict(lr_mult=0.1),
        }
    ),
)

# iteration-based: evaluate at the end only (tools/demo.py may add a midway evaluation)
train_cfg = dict(
    _delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup_iters),
    dict(
        type='CosineAnnealingLR',
        by_epoch=False,
        begin=warmup_iters,
        end=max_iters,
        T_max=max_iters - warmup_iters,
        eta_min_ratio=0.05,
    ),
]
auto_scale_lr = dict(enable=False, base_batch_size=6)

default_hooks = dict(
    # log_metric_by_epoch=False: validation metrics are logged at their iteration (else at epoch 0)
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(
        type='AtomicCheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1
    ),
    visualization=dict(type='DetVisualizationHook', draw=False),
)
# the json log also names the validation round of each line, which mmdet's analyze_logs.py groups
# by: `plot_curve LOG --keys bbox_mAP` draws one point per evaluation
log_processor = dict(type='ValRoundLogProcessor', window_size=20, by_epoch=False)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='gloo'),
)
# no work_dir here: tools/demo.py passes its own (work_dirs/demo/), and tools/train.py with this
# config uses mmdet's default, work_dirs/<config name>/, so that it never resumes the demo's run
randomness = dict(seed=0)
