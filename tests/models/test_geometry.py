"""Geometry: inverse_sigmoid, box deltas, valid ratios, reference points."""

import pytest
import torch

from mmdet_deformdetr.models.geometry import (
    apply_box_delta,
    encoder_reference_points,
    inverse_sigmoid,
    scale_by_valid_ratios,
    valid_ratios_from_mask,
)


def test_inverse_sigmoid_inverts_and_stays_finite_at_the_ends() -> None:
    x = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(inverse_sigmoid(x).sigmoid(), x)
    ends = inverse_sigmoid(torch.tensor([0.0, 1.0]))
    assert torch.isfinite(ends).all()
    torch.testing.assert_close(ends, torch.tensor([-11.5129, 11.5129]), atol=1e-3, rtol=0)


def test_valid_ratios_from_mask() -> None:
    mask = torch.ones(2, 4, 8, dtype=torch.bool)
    mask[0] = False
    mask[1, :2, :6] = False  # image 2 fills 2 of 4 rows and 6 of 8 columns
    torch.testing.assert_close(
        valid_ratios_from_mask(mask), torch.tensor([[1.0, 1.0], [0.75, 0.5]])
    )


def test_encoder_reference_points_are_valid_pixel_centres() -> None:
    spatial_shapes = torch.tensor([[2, 4], [1, 2]])
    valid_ratios = torch.tensor(
        [[[1.0, 1.0], [1.0, 1.0]], [[0.5, 0.5], [0.5, 1.0]]], dtype=torch.float64
    )
    points = encoder_reference_points(spatial_shapes, valid_ratios)
    assert points.shape == (2, 8 + 2, 2, 2) and points.dtype == torch.float64
    # unpadded image: first token of level 0 is the centre of pixel (0, 0) of a 4 x 2 map
    torch.testing.assert_close(points[0, 0, 0], torch.tensor([0.125, 0.25], dtype=torch.float64))
    # padded image: normalised by the valid size (2 x 1 pixels), then scaled back per level
    # -> seen from its own level, a token sits at its pixel centre of the padded map
    torch.testing.assert_close(points[1, 0, 0], torch.tensor([0.125, 0.25], dtype=torch.float64))
    # seen from level 1 (ratios 0.5, 1.0): x = 0.125 / 0.5 * 0.5, y = 0.25 / 0.5 * 1.0
    torch.testing.assert_close(points[1, 0, 1], torch.tensor([0.125, 0.5], dtype=torch.float64))


def test_scale_by_valid_ratios_scales_boxes_in_all_four_coordinates() -> None:
    ratios = torch.tensor([[[0.5, 0.25]]])  # (bs=1, L=1, 2)
    boxes = torch.tensor([[[0.4, 0.8, 0.2, 0.4]]])
    torch.testing.assert_close(
        scale_by_valid_ratios(boxes, ratios), torch.tensor([[[[0.2, 0.2, 0.1, 0.1]]]])
    )
    points = boxes[..., :2]
    assert scale_by_valid_ratios(points, ratios).shape == (1, 1, 1, 2)
    with pytest.raises(ValueError, match='2 .points. or 4'):
        scale_by_valid_ratios(boxes[..., :3], ratios)


def test_apply_box_delta_points_move_the_centre_boxes_all_four() -> None:
    delta = torch.tensor([0.5, -0.5, -1.0, 2.0], dtype=torch.float64)
    point = torch.tensor([0.3, 0.6], dtype=torch.float64)
    box = torch.tensor([0.3, 0.6, 0.2, 0.1], dtype=torch.float64)
    expected_point = torch.cat([(torch.logit(point) + delta[:2]).sigmoid(), delta[2:].sigmoid()])
    torch.testing.assert_close(apply_box_delta(delta, point), expected_point)
    torch.testing.assert_close(apply_box_delta(delta, box), (torch.logit(box) + delta).sigmoid())
