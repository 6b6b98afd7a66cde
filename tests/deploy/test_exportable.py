"""The exported function in eager mode, and the errors of the ONNX runtime helpers (no export
here: tests/deploy/test_onnx_export.py exports)."""

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from mmdet_deformdetr.deploy import ExportableDeformDETR, OnnxDetector, use_reference_attention
from mmdet_deformdetr.models.layers import MSDeformAttn
from tests.helpers.models import VARIANTS, as_double, build_tiny_model, make_batch, perturb_
from tests.helpers.tools import TINY_CONFIG


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_exportable_module_is_predict_without_padding(variant):
    """What the graph computes equals DeformDETR.predict on an unpadded image (boxes in input
    pixels, rescale=False), with the batched post-process of the head."""
    model = perturb_(build_tiny_model(variant)).eval()
    assert (
        use_reference_attention(model)
        == len([m for m in model.modules() if isinstance(m, MSDeformAttn)])
        > 0
    )
    data = make_batch(model, image_shapes=((72, 96),), training=False)
    with torch.no_grad():
        expected = model.predict(data['inputs'], data['data_samples'], rescale=False)[0]
        boxes, scores, labels = ExportableDeformDETR(model)(data['inputs'])
    assert boxes.shape == (1, 20, 4)  # max_per_img of the tiny model
    assert torch.equal(labels[0], expected.pred_instances.labels)
    torch.testing.assert_close(scores[0], expected.pred_instances.scores, rtol=0, atol=0)
    torch.testing.assert_close(boxes[0], expected.pred_instances.bboxes, rtol=0, atol=0)


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_padded_batch_gives_each_image_what_it_gives_alone(variant):
    """The padded form (images and img_shapes) runs the model's masked path: each image of a
    batch of three sizes gets what the single-image form gives it alone, in float64 to rounding
    (float32 noise could hide a real difference); the boxes are in each image's own pixels."""
    model = perturb_(build_tiny_model(variant), skip=()).double().eval()
    use_reference_attention(model)
    module = ExportableDeformDETR(model)
    data = as_double(make_batch(model, image_shapes=((96, 96), (80, 72), (67, 93)), training=False))
    inputs = data['inputs']
    img_shapes = torch.tensor([sample.img_shape[:2] for sample in data['data_samples']])
    with torch.no_grad():
        together = module(inputs, img_shapes)
        for row, (height, width) in enumerate(img_shapes.tolist()):
            image = inputs[row : row + 1, :, :height, :width].contiguous()
            boxes, scores, labels = module(image)
            assert torch.equal(together[2][row], labels[0])
            torch.testing.assert_close(together[1][row], scores[0], rtol=0, atol=1e-12)
            torch.testing.assert_close(together[0][row], boxes[0], rtol=0, atol=1e-9)
            assert float(together[0][row].max()) <= max(height, width)


def test_batched_images_give_what_each_gives_alone():
    model = perturb_(build_tiny_model('two_stage')).eval()
    module = ExportableDeformDETR(model)
    images = torch.randn(2, 3, 80, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        together = module(images)
        for row in range(2):
            for joint, single in zip(together, module(images[row : row + 1])):
                torch.testing.assert_close(joint[row], single[0], rtol=0, atol=1e-4)


def test_onnx_file_of_another_origin_is_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node('Identity', ['images'], ['boxes'])],
        'foreign',
        [helper.make_tensor_value_info('images', TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info('boxes', TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    path = tmp_path / 'foreign.onnx'
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)]), str(path))
    with pytest.raises(ValueError, match=r'foreign\.onnx.*export_onnx\.py'):
        OnnxDetector(path, str(TINY_CONFIG))
    assert path.is_file()
