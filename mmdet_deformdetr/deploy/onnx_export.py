"""Export a DeformDETR to ONNX: ``torch.export`` with symbolic batch, height and width, then the
dynamo ONNX exporter of torch (``torch.onnx.export(exported_program)``).

Why this exporter and not the TorchScript one (``dynamo=False``): the TorchScript tracer records
every Python int it sees, so the per-level ``(H, W)`` that the transformer loops over become
constants. Such a graph still *runs* on other image sizes and returns wrong boxes (measured:
boxes off by more than 100 px at 128x96 after tracing at 96x128). ``torch.export`` keeps those
sizes symbolic and refuses to specialise them (``Dim.DYNAMIC``), so a wrong graph cannot be
written silently; the model side keeps its level shapes as Python ints for that
(``mmdet_deformdetr/ops/shapes.py``).

Opset 18: the exporter's own opset (``torch.onnx``'s torchlib is written for 18, so no version
conversion runs); ONNX ``GridSample``, which the deformable attention becomes, needs >= 16.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from ..version import __version__
from .exportable import ExportableDeformDETR, use_reference_attention

OPSET = 18
INPUT_NAME = 'images'
SHAPES_NAME = 'img_shapes'
OUTPUT_NAMES = ('boxes', 'scores', 'labels')
METADATA_KEY = 'mmdet_deformdetr'


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote: the file, the sizes the graph accepts, timings."""

    path: Path
    min_height: int
    min_width: int
    num_nodes: int
    export_seconds: float
    metadata: Dict[str, object] = field(default_factory=dict)


def require_onnx() -> None:
    """Fail with the install command when the optional deploy packages are missing."""
    missing = []
    for name in ('onnx', 'onnxscript', 'onnxruntime'):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f'ONNX export and inference need {", ".join(missing)}: install the '
            "deploy extra, pip install -e '.[deploy]'"
        )


def _input_ranges(exported: torch.export.ExportedProgram, axes: Tuple[int, ...]) -> Tuple[int, int]:
    """Smallest height and width the exported program was traced for.

    torch.export assumes that no symbolic size is 0 or 1, so the coarsest level (stride 64) must
    be at least 2 x 2: images of at least 65 x 65. The same assumption makes a dynamic batch
    ">= 2" on paper; a batch of one runs through the same graph (every batched op has the batch
    on both sides, nothing broadcasts over it), which the tests check.
    """
    placeholder = next(
        node
        for node in exported.graph.nodes
        if node.op == 'placeholder' and node.name == INPUT_NAME
    )
    lowest = {}
    for axis in axes:
        size = placeholder.meta['val'].shape[axis]
        if isinstance(size, int):
            raise RuntimeError(
                f'torch.export specialised axis {axis} of the input to {size}; '
                'the graph would accept only that size'
            )
        value_range = exported.range_constraints.get(size.node.expr)
        lowest[axis] = int(value_range.lower) if value_range is not None else 1
    return lowest[2], lowest[3]


def export_onnx(
    detector: nn.Module,
    out: Union[str, Path],
    example_hw: Tuple[int, int] = (320, 320),
    dynamic_batch: bool = False,
    metadata: Optional[Dict[str, object]] = None,
) -> ExportReport:
    """Export ``detector`` (a built ``DeformDETR``, weights loaded) to ``out``.

    Args:
        detector: the model; its deformable attentions are switched to ``impl='pytorch'``.
        out: the ``.onnx`` file to write (one file, weights inside).
        example_hw: height and width of the example batch that is traced (values do not matter,
            the sizes are symbolic; two-stage models need at least ``num_queries`` tokens).
        dynamic_batch: a symbolic batch axis too, for padded batches of images of different
            sizes: the graph then takes a second input, ``img_shapes (batch, 2)`` int64, each
            image's ``(h, w)`` before padding, from which it keeps the padding out of each
            image's result, as the image alone gives (``ExportableDeformDETR``; default:
            batch 1, the usual deployment of a detector; a symbolic batch makes every shape
            expression larger, and the export takes about twice as long).
        metadata: extra entries for the model's ``metadata_props`` (class names, ...).

    Returns:
        an :class:`ExportReport`; the graph is checked with ``onnx.checker`` (full check) and its
        input axes are verified to be symbolic.
    """
    require_onnx()
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    use_reference_attention(detector)
    module = ExportableDeformDETR(detector)
    axes = (0, 2, 3) if dynamic_batch else (2, 3)
    dynamic_shapes = {INPUT_NAME: {axis: torch.export.Dim.DYNAMIC for axis in axes}}
    input_names = [INPUT_NAME]
    # a dynamic batch needs an example of 2: torch.export specialises sizes 0 and 1
    example = (torch.zeros(2 if dynamic_batch else 1, 3, *example_hw),)
    if dynamic_batch:
        # a padded batch: each image's (h, w) goes in, the padding is kept out in the graph
        # (the masked path of models/padding.py); its strides are found now, not traced
        detector.padding_strides()
        example += (torch.tensor([example_hw] * 2, dtype=torch.int64),)
        dynamic_shapes[SHAPES_NAME] = {0: torch.export.Dim.DYNAMIC}
        input_names.append(SHAPES_NAME)
    with torch.no_grad():
        exported = torch.export.export(module, example, dynamic_shapes=dynamic_shapes, strict=False)
    min_height, min_width = _input_ranges(exported, axes)
    # optimize=False: onnxscript's optimizer (0.7) fuses consecutive Clip nodes into one that
    # reads a value defined after it (the graph fails onnx.checker and onnxruntime's loader);
    # onnxruntime runs its own graph optimisations when it loads the model anyway.
    torch.onnx.export(
        exported,
        example,
        str(out),
        dynamo=True,
        opset_version=OPSET,
        input_names=input_names,
        output_names=list(OUTPUT_NAMES),
        optimize=False,
        external_data=False,
    )
    model = onnx.load(str(out))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if any(not dims[axis].dim_param for axis in axes):
        raise RuntimeError(
            f'{out}: the exported input has fixed sizes '
            f'{[d.dim_value or d.dim_param for d in dims]}; expected symbolic '
            f'axes {axes}'
        )
    head = detector.bbox_head
    info = dict(
        version=__version__,
        exporter='torch.export + torch.onnx (dynamo)',
        opset=OPSET,
        input=(
            f'{INPUT_NAME} (batch, 3, height, width) float32, normalised, padded bottom/right '
            f'with zeros; {SHAPES_NAME} (batch, 2) int64, each image (h, w) before padding; '
            'each image gives what it gives alone'
            if dynamic_batch
            else f'{INPUT_NAME} (1, 3, height, width) float32, normalised, unpadded'
        ),
        inputs=input_names,
        dynamic_batch=dynamic_batch,
        outputs=list(OUTPUT_NAMES),
        min_height=min_height,
        min_width=min_width,
        num_classes=head.num_classes,
        max_per_img=head.test_cfg.get('max_per_img'),
        with_box_refine=detector.with_box_refine,
        as_two_stage=detector.as_two_stage,
        num_queries=detector.num_queries,
        **(metadata or {}),
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))
    return ExportReport(
        path=out,
        min_height=min_height,
        min_width=min_width,
        num_nodes=len(model.graph.node),
        export_seconds=time.perf_counter() - start,
        metadata=info,
    )


def read_metadata(path: Union[str, Path]) -> Dict[str, object]:
    """The entries :func:`export_onnx` stored in ``path``; a clear error for other files."""
    require_onnx()
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise ValueError(
        f'{path} has no {METADATA_KEY!r} metadata: it was not written by '
        'tools/deployment/export_onnx.py; export the model with that tool'
    )
