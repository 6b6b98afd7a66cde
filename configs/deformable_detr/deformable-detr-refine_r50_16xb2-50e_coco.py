# Deformable DETR + iterative bounding box refinement (paper Table 1): each decoder layer refines
# the boxes of the previous one with its own regression branch.
_base_ = 'deformable-detr_r50_16xb2-50e_coco.py'
model = dict(with_box_refine=True)
