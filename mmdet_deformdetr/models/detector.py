"""``DeformDETR``: backbone -> neck -> DeformableDetrTransformer -> DeformDETRHead."""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmdet.models.detectors import BaseDetector
from mmdet.models.layers import SinePositionalEncoding
from mmdet.registry import MODELS
from mmdet.structures import OptSampleList, SampleList
from torch import Tensor

from ..checkpoint.load_hook import convert_checkpoint_pre_hook
from ..ops.ms_deform_attn import capturing_graph
from .eval_fusion import EvalFusionCache
from .padding import level_padding_masks, maskable_modules, padding_kept_out, probe_strides

# set once on the detector and handed down in code (docs/architecture.md, config interface)
_TRANSFORMER_DERIVED = ('num_queries', 'num_feature_levels', 'with_box_refine', 'as_two_stage')
_HEAD_DERIVED = (
    'embed_dims',
    'num_pred_layer',
    'with_box_refine',
    'as_two_stage',
    'train_cfg',
    'test_cfg',
)


class DeformDETR(BaseDetector):
    """Deformable DETR (Zhu et al., ICLR 2021).

    Flags and sizes needed by several parts are set here once and passed down: the transformer
    receives ``num_queries``, ``num_feature_levels``, ``with_box_refine``, ``as_two_stage``; the
    head receives ``embed_dims``, ``num_pred_layer`` (decoder layers, +1 for two-stage), the two
    flags, ``train_cfg`` and ``test_cfg``; the sine positional encoding gets
    ``num_feats = embed_dims // 2``. Setting any of them in a sub-config is an error.

    Args:
        backbone: backbone config (mmdet ``MODELS``).
        neck: neck config; must output ``num_feature_levels`` maps of ``embed_dims`` channels.
        transformer: ``DeformableDetrTransformer`` config.
        bbox_head: ``DeformDETRHead`` config.
        positional_encoding: extra arguments of mmdet's ``SinePositionalEncoding``
            (``normalize``, ``offset``, ``temperature``, ``scale``, ``eps``).
        num_queries: object queries (two-stage: proposals kept).
        num_feature_levels: feature levels L fed to the transformer.
        with_box_refine: iterative bounding-box refinement.
        as_two_stage: two-stage proposals; requires ``with_box_refine`` (checked by the head,
            which owns the branches).
        train_cfg: ``dict(assigner=...)``.
        test_cfg: ``dict(max_per_img=...)``.
        channels_last: run the backbone and neck in channels-last memory format: their
            convolution weights and the images (``(bs, 3, H, W)`` with the strides of
            ``(bs, H, W, 3)``; every convolution keeps it). On the CPU oneDNN's channels-last
            convolutions and max-pooling are faster (``docs/performance.md``), and
            the transformer's flattening to ``(bs, H*W, C)`` needs no copy. Same weights and
            state-dict keys; the numbers agree to float rounding.
        batch_invariant_eval: at evaluation (``model.eval()``: test, predict, validation), keep
            a padded batch's padding out of every image's result, so that an image's
            predictions do not depend on the images it is batched with
            (``models/padding.py``). ``False`` computes as the official code and mmdet, where
            padded positions enter the backbone's border convolutions and the neck's
            GroupNorm, and two-stage can keep padded tokens as queries. Training is the
            official computation either way.
        eval_fusion: in eval mode without gradients (``test_step``, ``val_step``, ``predict``
            under ``torch.no_grad``), run an inference copy of the backbone and neck with frozen
            BatchNorm folded into the convolutions, channels-last on the CPU
            (``models/eval_fusion.py``). The modules, their state dict and training are
            untouched; the copy is rebuilt after any change of their weights. False runs the
            modules themselves (``--cfg-options model.eval_fusion=False``).
        data_preprocessor: mmdet data preprocessor config.
        init_cfg: mmengine initialisation config.
    """

    def __init__(
        self,
        backbone: dict,
        neck: dict,
        transformer: dict,
        bbox_head: dict,
        positional_encoding: Optional[dict] = None,
        num_queries: int = 300,
        num_feature_levels: int = 4,
        with_box_refine: bool = False,
        as_two_stage: bool = False,
        train_cfg: Optional[dict] = None,
        test_cfg: Optional[dict] = None,
        channels_last: bool = False,
        batch_invariant_eval: bool = True,
        eval_fusion: bool = True,
        data_preprocessor: Optional[dict] = None,
        init_cfg: Optional[dict] = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        _reject_derived_keys('transformer', transformer, _TRANSFORMER_DERIVED)
        _reject_derived_keys('bbox_head', bbox_head, _HEAD_DERIVED)
        positional_encoding = dict(positional_encoding or {})
        _reject_derived_keys('positional_encoding', positional_encoding, ('num_feats',))
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.with_box_refine = with_box_refine
        self.as_two_stage = as_two_stage
        self.channels_last = channels_last
        self.batch_invariant_eval = batch_invariant_eval
        # {module name: stride} and level strides, found on first use (padding_strides)
        self._padding_strides: Optional[Tuple[Dict[str, int], List[int]]] = None
        self.eval_fusion = eval_fusion
        self._eval_fusion_cache = EvalFusionCache()  # a plain attribute: not in the module tree

        # the transformer first: it validates embed_dims / num_heads and defines C for the rest
        self.transformer = MODELS.build(
            dict(
                transformer,
                num_queries=num_queries,
                num_feature_levels=num_feature_levels,
                with_box_refine=with_box_refine,
                as_two_stage=as_two_stage,
            )
        )
        self.embed_dims = self.transformer.embed_dims
        _check_neck(neck, self.embed_dims, num_feature_levels)
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(neck)
        if channels_last:  # the convolution weights too, so no convolution reorders them per call
            self.backbone.to(memory_format=torch.channels_last)
            self.neck.to(memory_format=torch.channels_last)
        num_pred_layer = self.transformer.num_decoder_layers + int(as_two_stage)
        self.bbox_head = MODELS.build(
            dict(
                bbox_head,
                embed_dims=self.embed_dims,
                num_pred_layer=num_pred_layer,
                with_box_refine=with_box_refine,
                as_two_stage=as_two_stage,
                train_cfg=train_cfg,
                test_cfg=test_cfg,
            )
        )
        self.positional_encoding = SinePositionalEncoding(
            num_feats=self.embed_dims // 2, **positional_encoding
        )
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        # Official, mmdet-zoo and Hugging Face state dicts are converted to our keys on load, so
        # `load_from`, `resume` and `load_checkpoint` take them as they are (see load_hook.py).
        self.register_load_state_dict_pre_hook(convert_checkpoint_pre_hook)

    def extract_feat(
        self, batch_inputs: Tensor, valid_hw: Optional[Tensor] = None
    ) -> Tuple[Tensor, ...]:
        """Args: batch_inputs ``(bs, 3, H, W)``; valid_hw ``(bs, 2)`` int64 ``(h, w)`` of each
        image: padding kept out of the backbone and neck (``models/padding.py``), or None.
        Returns L maps ``(bs, C, H_l, W_l)`` (in channels-last memory format with
        ``channels_last`` and from the inference copy on the CPU)."""
        if self.uses_inference_copy():
            backbone, neck = self._eval_fusion_cache.get(self.backbone, self.neck, owner=self)
            channels_last = batch_inputs.device.type == 'cpu'
        else:
            backbone, neck, channels_last = self.backbone, self.neck, self.channels_last
        if channels_last:
            batch_inputs = batch_inputs.contiguous(memory_format=torch.channels_last)
        # the copy keeps the modules' names, so the strides found on the originals apply to it
        strides = self.padding_strides()[0] if valid_hw is not None else {}
        with padding_kept_out(dict(backbone=backbone, neck=neck), valid_hw, strides):
            return tuple(neck(backbone(batch_inputs)))

    def uses_inference_copy(self) -> bool:
        """Whether ``extract_feat`` runs the fused inference copy now: ``eval_fusion``, eval mode,
        no gradients, and no graph being traced, exported or compiled (those see the modules)."""
        return (
            self.eval_fusion
            and not self.training
            and not torch.is_grad_enabled()
            and not capturing_graph()
            and not torch.compiler.is_compiling()
        )

    def val_step(self, data: Union[dict, tuple, list]) -> list:
        """mmengine's ``val_step`` without gradients (predictions need none), so every caller
        gets the eval-time fusion."""
        with torch.no_grad():
            return super().val_step(data)

    def test_step(self, data: Union[dict, tuple, list]) -> list:
        """mmengine's ``test_step`` without gradients (see ``val_step``)."""
        with torch.no_grad():
            return super().test_step(data)

    def forward_transformer(
        self,
        feats: Sequence[Tensor],
        batch_data_samples: OptSampleList,
        valid_hw: Optional[Tensor] = None,
    ) -> Dict[str, Optional[Tensor]]:
        """Masks and positional embeddings per level, then the transformer (see
        ``DeformableDetrTransformer.forward`` for the returned dict). With ``valid_hw``
        ``(bs, 2)`` the masks are exact (``models/padding.py``) and ``batch_data_samples`` is
        not read; without, they are the official ones (:meth:`padding_masks`)."""
        if valid_hw is not None:
            masks = level_padding_masks(feats, valid_hw, self.padding_strides()[1])
        else:
            masks = self.padding_masks(feats, batch_data_samples)
        pos_embeds = [self.positional_encoding(mask) for mask in masks]
        return self.transformer(
            feats,
            masks,
            pos_embeds,
            reg_branches=self.bbox_head.reg_branches,
            cls_branches=self.bbox_head.cls_branches,
            exclude_padded_proposals=valid_hw is not None,
        )

    def _transformer_outputs(
        self, batch_inputs: Tensor, batch_data_samples: OptSampleList
    ) -> Dict[str, Optional[Tensor]]:
        """:meth:`extract_feat` then :meth:`forward_transformer`, both given each image's size
        when the batch's padding must be kept out (:meth:`valid_sizes`): what ``loss``,
        ``predict`` and ``_forward`` share."""
        valid_hw = self.valid_sizes(batch_data_samples)
        feats = self.extract_feat(batch_inputs, valid_hw)
        return self.forward_transformer(feats, batch_data_samples, valid_hw)

    def padding_strides(self) -> Tuple[Dict[str, int], List[int]]:
        """The stride of every maskable module's input (``{name: stride}``) and of every level,
        found once by :func:`~mmdet_deformdetr.models.padding.probe_strides` (again when the
        backbone or neck has other maskable modules since, e.g. after fusing). Call it before
        ``torch.export`` to keep the probe out of the traced forward."""
        names = {name for name, _ in maskable_modules(self.backbone, 'backbone')}
        names.update(name for name, _ in maskable_modules(self.neck, 'neck'))
        if self._padding_strides is None or set(self._padding_strides[0]) != names:
            self._padding_strides = probe_strides(self.backbone, self.neck)
        return self._padding_strides

    def valid_sizes(self, batch_data_samples: OptSampleList) -> Optional[Tensor]:
        """``(bs, 2)`` int64 ``(h, w)`` of each image when padding must be kept out: at
        evaluation with ``batch_invariant_eval``, for a batch where some image is padded.
        None otherwise (training, the switch off, or no padding: nothing to mask)."""
        if self.training or not self.batch_invariant_eval or batch_data_samples is None:
            return None
        sizes = [tuple(sample.img_shape[:2]) for sample in batch_data_samples]
        if all(size == tuple(batch_data_samples[0].batch_input_shape) for size in sizes):
            return None
        return torch.tensor(sizes, dtype=torch.long, device=self.transformer.level_embed.device)

    @staticmethod
    def padding_masks(feats: Sequence[Tensor], batch_data_samples: OptSampleList) -> List[Tensor]:
        """Where each level's features are padding.

        Args:
            feats: L maps ``(bs, C, H_l, W_l)``.
            batch_data_samples: metainfo ``batch_input_shape (H, W)`` and ``img_shape (h, w)``;
                None means no padding.

        Returns:
            L bool masks ``(bs, H_l, W_l)``, True at padding (the input mask downsampled by
            nearest interpolation, as the official code).
        """
        batch_size = feats[0].shape[0]
        if batch_data_samples is None:
            return [
                feat.new_zeros((batch_size, *feat.shape[-2:]), dtype=torch.bool) for feat in feats
            ]
        input_h, input_w = batch_data_samples[0].batch_input_shape
        input_mask = feats[0].new_ones((batch_size, input_h, input_w))
        for index, sample in enumerate(batch_data_samples):
            img_h, img_w = sample.img_shape[:2]
            input_mask[index, :img_h, :img_w] = 0
        return [
            F.interpolate(input_mask[None], size=feat.shape[-2:])[0].to(torch.bool)
            for feat in feats
        ]

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """Args: batch_inputs ``(bs, 3, H, W)`` normalised images; batch_data_samples with
        ``gt_instances``. Returns the loss dict (``loss_cls``, ``d0.loss_cls``, ...)."""
        outputs = self._transformer_outputs(batch_inputs, batch_data_samples)
        return self.bbox_head.loss(**outputs, batch_data_samples=batch_data_samples)

    def predict(
        self, batch_inputs: Tensor, batch_data_samples: SampleList, rescale: bool = True
    ) -> SampleList:
        """Adds ``pred_instances`` (``bboxes (k, 4)`` xyxy, ``scores (k,)``, ``labels (k,)``) to
        every data sample; boxes are in original-image pixels when ``rescale``."""
        outputs = self._transformer_outputs(batch_inputs, batch_data_samples)
        results = self.bbox_head.predict(
            outputs['hidden_states'],
            outputs['init_reference'],
            outputs['inter_references'],
            batch_data_samples,
            rescale=rescale,
        )
        return self.add_pred_to_datasample(batch_data_samples, results)

    def _forward(
        self, batch_inputs: Tensor, batch_data_samples: OptSampleList = None
    ) -> Tuple[Tensor, Tensor]:
        """Raw head outputs: ``all_cls_scores (D, bs, nq, num_classes)`` logits and
        ``all_bbox_preds (D, bs, nq, 4)`` normalised ``(cx, cy, w, h)``."""
        outputs = self._transformer_outputs(batch_inputs, batch_data_samples)
        return self.bbox_head(
            outputs['hidden_states'], outputs['init_reference'], outputs['inter_references']
        )


def _reject_derived_keys(name: str, cfg: dict, derived: Sequence[str]) -> None:
    """Values derived by the detector must not be restated in a sub-config (they would drift)."""
    restated = [key for key in derived if key in cfg]
    if restated:
        raise ValueError(
            f'model.{name} must not set {restated}: they are set on the detector '
            f'(model.<key>) or derived from it'
        )


def _check_neck(neck: dict, embed_dims: int, num_feature_levels: int) -> None:
    """Catch neck/transformer mismatches at build time, saying which value to change."""
    out_channels = neck.get('out_channels')
    if out_channels is not None and out_channels != embed_dims:
        raise ValueError(
            f'model.neck.out_channels={out_channels} must equal '
            f'model.transformer.embed_dims={embed_dims}'
        )
    num_outs = neck.get('num_outs')
    if num_outs is None and 'in_channels' in neck:
        num_outs = len(neck['in_channels'])  # ChannelMapper's default
    if num_outs is not None and num_outs != num_feature_levels:
        raise ValueError(
            f'the neck outputs {num_outs} levels (model.neck.num_outs) but '
            f'model.num_feature_levels={num_feature_levels}: set one to the other'
        )
