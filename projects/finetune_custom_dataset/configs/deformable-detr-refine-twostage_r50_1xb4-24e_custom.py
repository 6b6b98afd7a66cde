# Fine-tune two-stage Deformable DETR (with iterative box refinement), trained on COCO, on your own
# COCO-format dataset. Edit the block "your dataset" below; everything else follows from it.
# As shipped it reads the synthetic shapes dataset that the package writes:
#   .venv/bin/python -m mmdet_deformdetr.datasets data/shapes_finetune
# Downloads: one file, the COCO checkpoint of `load_from` below (on first use, into torch.hub's
# cache). Offline, either put that file there or set load_from to a local copy, or train without
# it: --cfg-options load_from=None (the weights then start from their initialisation; see the
# project README, "Downloads and offline use").
_base_ = '../../../configs/deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'

# --- your dataset ---------------------------------------------------------------------------------
# data_root is relative to the directory you start tools/train.py from (the repository root), or
# absolute. These variables are read when the file is parsed: from the command line, override the
# keys that use them instead (see the project README), e.g. train_dataloader.dataset.data_root=...
data_root = 'data/shapes_finetune/'
train_ann_file = 'annotations/instances_train.json'
train_img_prefix = 'train/'
val_ann_file = 'annotations/instances_val.json'
val_img_prefix = 'val/'
# the category names of your annotation files, in the order of the file's "categories" (mmdet
# numbers the labels in that order; a different order is refused when the dataset is built);
# categories of the file that are not listed are left out (their boxes are dropped, and counted)
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star', 'hexagon'),
    palette=[(220, 20, 60), (119, 11, 32), (0, 0, 142), (0, 160, 0), (250, 170, 30)],
)
# --------------------------------------------------------------------------------------------------

# The classification branches (decoder and two-stage proposal branches) get one channel per class;
# when loading the COCO checkpoint, mmengine skips their 80-channel tensors (size mismatch, a
# warning) and keeps everything else: backbone, neck, transformer and box regression.
# The primitive config's ImageNet backbone (model.backbone.init_cfg) is not downloaded: load_from
# replaces every backbone weight right after the initialisation.
model = dict(backbone=dict(init_cfg=None), bbox_head=dict(num_classes=len(metainfo['classes'])))

# mmdet model zoo, COCO box AP 47.0; any format our loader detects works (official repository,
# mmdet zoo, Hugging Face, our own checkpoints)
load_from = (
    'https://download.openmmlab.com/mmdetection/v3.0/deformable_detr/'
    'deformable-detr-refine-twostage_r50_16xb2-50e_coco/'
    'deformable-detr-refine-twostage_r50_16xb2-50e_coco_20221021_184714-acc8a5ff.pth'
)

train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file=train_ann_file,
        data_prefix=dict(img=train_img_prefix),
    ),
)
val_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file=val_ann_file,
        data_prefix=dict(img=val_img_prefix),
    )
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + val_ann_file)
test_evaluator = val_evaluator

# A shorter schedule and half the from-scratch learning rate: the weights start close to a good
# solution, and small datasets overfit quickly. The lr is for 1 GPU x 4 images; --auto-scale-lr
# rescales it for another total batch size.
max_epochs = 24
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
optim_wrapper = dict(optimizer=dict(lr=1e-4))
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[20], gamma=0.1)
]
auto_scale_lr = dict(base_batch_size=4)
default_hooks = dict(
    checkpoint=dict(interval=2, max_keep_ckpts=3, save_best='coco/bbox_mAP', rule='greater')
)
