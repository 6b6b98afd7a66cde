"""tools/analysis_tools/vis_sampling_points.py draws the model's own sampling locations: the
points it writes are compared with locations recomputed here from the inputs of the attention
layers (forward hooks), for the top detections and for an encoder pixel."""

import json
import sys
from pathlib import Path

import mmcv
import numpy as np
import pytest
import torch
from mmdet.apis import inference_detector, init_detector

from tests.helpers.models import VARIANTS
from tests.helpers.tools import TINY_CONFIG, run_tool, save_tiny_checkpoint

pytestmark = pytest.mark.slow


def recompute_locations(module, args, kwargs):
    """What an MSDeformAttn computes from its inputs: locations ``(bs, nq, M, L, K, 2)`` and
    weights ``(bs, nq, M, L, K)`` (the paper's Eq. 3, written out independently)."""
    query, reference = args[0], args[1]
    if kwargs.get('query_pos') is not None:
        query = query + kwargs['query_pos']
    bs, nq, _ = query.shape
    heads, levels, points = module.num_heads, module.num_levels, module.num_points
    offsets = module.sampling_offsets(query).view(bs, nq, heads, levels, points, 2)
    weights = module.attention_weights(query).view(bs, nq, heads, levels * points).softmax(-1)
    shapes = torch.as_tensor(kwargs['spatial_shapes'], dtype=torch.float32)
    if reference.shape[-1] == 2:
        locations = reference[:, :, None, :, None] + offsets / shapes.flip(-1)[:, None]
    else:
        locations = (
            reference[:, :, None, :, None, :2]
            + offsets / points * reference[:, :, None, :, None, 2:] * 0.5
        )
    return locations, weights.view(bs, nq, heads, levels, points)


@pytest.mark.parametrize('variant', ['plain', 'two_stage'])
def test_drawn_points_are_the_models_sampling_locations(variant, coco_photos, tmp_path):
    config = tmp_path / f'tiny_{variant}.py'
    config.write_text(f'_base_ = {str(TINY_CONFIG)!r}\nmodel = dict(**{VARIANTS[variant]!r})\n')
    checkpoint = save_tiny_checkpoint(tmp_path / 'tiny.pth', variant, config=config)
    image = sorted((coco_photos / 'images').glob('*.jpg'))[2]
    pixel = (200.0, 150.0)
    out_dir = tmp_path / 'vis'
    run_tool(
        [
            sys.executable,
            'tools/analysis_tools/vis_sampling_points.py',
            str(image),
            str(config),
            str(checkpoint),
            '--out-dir',
            str(out_dir),
            '--topk',
            '2',
            '--pixel',
            *map(str, pixel),
            '--pixel-level',
            '1',
            '--panel-width',
            '320',
        ]
    )
    drawn = json.loads((out_dir / 'sampling_points.json').read_text())

    model = init_detector(str(config), str(checkpoint), device='cpu')
    seen = {}

    def keep(name):
        def hook(module, args, kwargs, output):
            seen[name] = recompute_locations(module, args, kwargs) + (args[1],)

        return hook

    model.transformer.decoder.layers[-1].cross_attn.register_forward_hook(
        keep('decoder'), with_kwargs=True
    )
    model.transformer.encoder.layers[-1].self_attn.register_forward_hook(
        keep('encoder'), with_kwargs=True
    )
    with torch.no_grad():
        sample = inference_detector(model, str(image))
    pad_h, pad_w = sample.batch_input_shape
    scale = np.array([pad_w / sample.scale_factor[0], pad_h / sample.scale_factor[1]])

    def check(entry, role, query):
        locations, weights, reference = (t[0, query].double().numpy() for t in seen[role])
        for point in entry['points']:
            where = locations[point['head'], point['level'], point['point']] * scale
            np.testing.assert_allclose([point['x'], point['y']], where, atol=1e-3, rtol=0)
            assert point['weight'] == pytest.approx(
                weights[point['head'], point['level'], point['point']], abs=1e-6
            )
        np.testing.assert_allclose(entry['reference'], reference[0, :2] * scale, atol=1e-3)
        heads, levels, points = weights.shape
        assert len(entry['points']) == heads * levels * points

    assert len(drawn['decoder']) == 2
    predictions = sample.pred_instances
    for rank, entry in enumerate(drawn['decoder']):
        check(entry, 'decoder', entry['query'])
        np.testing.assert_allclose(entry['box'], predictions.bboxes[rank].numpy(), atol=1e-4)
        assert entry['label'] == int(predictions.labels[rank])

    encoder = drawn['encoder']
    # the query of level 1 (stride 16) whose cell holds the pixel
    height, width = encoder['level_shapes'][1]
    x, y = pixel[0] / scale[0], pixel[1] / scale[1]
    expected_query = (
        encoder['level_shapes'][0][0] * encoder['level_shapes'][0][1]
        + int(y * height) * width
        + int(x * width)
    )
    assert encoder['query'] == expected_query
    check(encoder, 'encoder', expected_query)

    rows = mmcv.imread(str(out_dir / 'decoder_points.png'))
    photo = mmcv.imread(str(image))
    panel_height = round(photo.shape[0] * 320 / photo.shape[1])
    levels = len(encoder['level_shapes'])
    assert rows.shape[1] == 320 * levels
    assert abs(rows.shape[0] - 2 * (panel_height + 24)) <= 2  # 2 detections + colour bars
    assert Path(out_dir / 'encoder_points.png').is_file()
