# The tiny Deformable DETR of tiny_deformdetr_coco.py set up for fault tests (kill, resume,
# checkpoints cut mid-write, NaN losses): deterministic (no dropout, seed 0, no data workers),
# 8 iterations with a checkpoint every 2 and only the newest kept (max_keep_ckpts=1, where a save
# that deletes first loses everything), a learning-rate step at iteration 5 (so a resumed
# scheduler shows), and the test-only fault hooks of fault_hooks.py, inert until a test sets
# custom_hooks.0.at_iter / custom_hooks.1.at_iter / custom_hooks.3.limit_bytes with --cfg-options.
_base_ = './tiny_deformdetr_coco.py'
custom_imports = dict(
    imports=['mmdet_deformdetr', 'tests.helpers.fault_hooks'], allow_failed_imports=False
)

model = dict(transformer=dict(dropout=0.0))
max_iters = 8
train_cfg = dict(max_iters=max_iters)
param_scheduler = [dict(type='MultiStepLR', by_epoch=False, milestones=[5], gamma=0.1)]
default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts=1))
custom_hooks = [
    dict(type='FaultKillDuringSaveHook', at_iter=0, moment='before_write'),
    dict(type='FaultNonFiniteLossHook', at_iter=0, term='loss_bbox', value='nan'),
    dict(type='CheckNumClassesHook'),  # the primitive's custom hook, kept
    dict(type='FaultSmallDiskHook', limit_bytes=0, root=''),  # custom_hooks.3: a small disk
]
