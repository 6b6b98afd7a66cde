"""mmdet 3.x zoo files (``{'meta', 'state_dict'}`` of mmdet's ``DeformableDETR``) load into ours
through ``mmengine.runner.load_checkpoint`` and predict the same."""

import copy
from pathlib import Path

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.runner import load_checkpoint

from tests.helpers.models import make_batch, mmdet_cfg_like, tiny_model_cfg
from tests.helpers.tiers import slow_except

# float64; measured: scores <= 1e-9, boxes (pixels, up to ~100) <= 3e-6
TOLERANCE = 1e-7
BOX_TOLERANCE = 1e-5
# as the model parity test: two-stage needs embed_dims 256 in mmdet's proposal embedding
CASES = [('plain', 64, 4, 12), ('refine', 64, 4, 12), ('two_stage', 256, 8, 30)]


@pytest.mark.parametrize(
    'variant,embed_dims,num_heads,num_queries',
    slow_except(CASES, lambda case: case[0] == 'two_stage'),
    ids=[case[0] for case in CASES],
)
def test_mmdet_zoo_file_predicts_the_same(
    variant, embed_dims, num_heads, num_queries, tmp_path: Path
):
    _check_zoo_roundtrip(variant, embed_dims, num_heads, num_queries, tmp_path, neck_bias=True)


def test_mmdet_zoo_file_without_neck_bias(tmp_path: Path):
    """mmdet's zoo configs build ChannelMapper without conv bias; ours has one (zeros then)."""
    _check_zoo_roundtrip('refine', 64, 4, 12, tmp_path, neck_bias=False)


def _check_zoo_roundtrip(
    variant: str, embed_dims: int, num_heads: int, num_queries: int, tmp_path: Path, neck_bias: bool
) -> None:
    ours_cfg = tiny_model_cfg(
        variant, embed_dims=embed_dims, num_heads=num_heads, num_queries=num_queries
    )
    mmdet_cfg = mmdet_cfg_like(ours_cfg)
    mmdet_cfg['neck']['bias'] = neck_bias
    ours_cfg['batch_invariant_eval'] = False  # mmdet's computation of the padded batch below
    torch.manual_seed(0)
    reference = MODELS.build(mmdet_cfg)
    reference.init_weights()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move every branch off its degenerate init (zeros, equal copies)
        for name, param in reference.named_parameters():
            if not name.startswith('backbone.'):
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    path = tmp_path / 'mmdet_zoo.pth'
    torch.save(
        {
            'meta': {
                'mmdet_version': '3.3.0',
                'epoch': 50,
                'iter': 1000,
                'dataset_meta': {'classes': ('a', 'b', 'c')},
            },
            'state_dict': reference.state_dict(),
        },
        path,
    )

    torch.manual_seed(123)  # different init: everything must come from the file
    ours = MODELS.build(ours_cfg)
    load_checkpoint(ours, str(path), map_location='cpu', strict=True)

    reference, ours = reference.double().eval(), ours.double().eval()
    data = make_batch(ours, image_shapes=((96, 96), (80, 72)), training=False)
    inputs = data['inputs'].double()
    with torch.no_grad():
        expected = reference.predict(inputs, copy.deepcopy(data['data_samples']))
        actual = ours.predict(inputs, copy.deepcopy(data['data_samples']))
    for expected_sample, actual_sample in zip(expected, actual):
        exp, act = expected_sample.pred_instances, actual_sample.pred_instances
        assert torch.equal(exp.labels, act.labels)
        assert (exp.scores - act.scores).abs().max() <= TOLERANCE
        assert (exp.bboxes - act.bboxes).abs().max() <= BOX_TOLERANCE
