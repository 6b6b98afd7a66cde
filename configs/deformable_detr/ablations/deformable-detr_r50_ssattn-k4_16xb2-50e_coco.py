# Table 2, row 3: multi-scale inputs (C3-C6) without multi-scale attention, K = 4.
# Without multi-scale attention a query samples K points per head in ONE level:
# - an encoder query (a pixel of level l) samples only level l, with a softmax over its K points;
# - a decoder query belongs to no level: it samples every level independently (K points per level,
#   a separate softmax per level) and the per-level outputs are averaged.
# (implemented by DeformableDetrTransformer, `multi_scale_attention=False`)
_base_ = '../deformable-detr_r50_16xb2-50e_coco.py'
model = dict(transformer=dict(multi_scale_attention=False))
