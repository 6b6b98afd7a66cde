# Table 2, row 4: multi-scale inputs (C3-C6), multi-scale deformable attention, K = 4.
# This is the default Deformable DETR: the config only inherits, so that the ablation table has one
# config per row and the rows below it (+ FPN, + BiFPN) change one thing each.
_base_ = '../deformable-detr_r50_16xb2-50e_coco.py'
