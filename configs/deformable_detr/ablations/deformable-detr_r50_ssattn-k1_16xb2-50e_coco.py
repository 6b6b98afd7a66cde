# Table 2, row 2: multi-scale inputs (C3-C6) without multi-scale attention, K = 1.
# Single-level sampling as in the K = 4 row (decoder queries: every level separately, averaged).
_base_ = './deformable-detr_r50_ssattn-k4_16xb2-50e_coco.py'
model = dict(transformer=dict(enc_num_points=1, dec_num_points=1))
