# Deformable DETR ++ two-stage (paper Table 1): the encoder proposes the decoder's initial boxes.
# Two-stage needs box refinement (as in the official code), hence the refine base.
_base_ = 'deformable-detr-refine_r50_16xb2-50e_coco.py'
model = dict(as_two_stage=True)
