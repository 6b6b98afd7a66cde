"""``DeformableDetrTransformer``: flatten levels -> encoder -> queries (or two-stage proposals)
-> decoder. The detection head's branches are handed in by the caller."""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

from ..ops import SpatialShapes, shapes_tensor
from .geometry import valid_ratios_from_mask
from .layers import (
    DeformableDecoder,
    DeformableDecoderLayer,
    DeformableEncoder,
    DeformableEncoderLayer,
    MSDeformAttn,
)
from .two_stage import encoder_proposals, proposal_queries


class DeformableDetrTransformer(BaseModule):
    """Encoder + decoder of Deformable DETR, with optional two-stage proposals.

    .. code:: text

        mlvl_feats, mlvl_masks, mlvl_pos_embeds   (L levels, each (bs, C, H_l, W_l))
                          |
                          V
                 +-----------------+   flatten levels, add level_embed to positions,
                 | pre_transformer |   spatial_shapes, level_start_index, valid_ratios
                 +-----------------+
                          |
                          V
                 +-----------------+   num_encoder_layers x (deformable self-attn, FFN)
                 |     encoder     |   -> memory (bs, N, C)
                 +-----------------+
                          |
                          V
                 +-----------------+   plain/refine: query_embed -> (query_pos, query),
                 |   pre_decoder   |                 reference_points(query_pos).sigmoid()
                 +-----------------+   TWO-STAGE: proposals from memory, scored and regressed
                          |            by cls_branches[D] / reg_branches[D], top-k become the
                          |            queries  -> enc_outputs_class / enc_outputs_coord
                          V
                 +-----------------+   D x (self-attn, deformable cross-attn, FFN);
                 |     decoder     |   refine: layer i moves the references with reg_branches[i]
                 +-----------------+
                          |
                          V
        hidden_states, init_reference, inter_references, enc_outputs_class, enc_outputs_coord

    ``multi_scale_attention=False`` is the ablation of the paper's Table 2
    (``SingleScaleDeformAttn``, ``layers/single_scale_attn.py``): each encoder query samples only
    its own feature level, and decoder queries, which belong to no level, sample every level
    independently and average the levels. Multi-scale *inputs* (L levels, level embedding) are kept.

    Args:
        embed_dims: channels C; divisible by ``num_heads`` and by 4 (sine embeddings use
            C / 2 features per coordinate, in sin/cos pairs).
        num_heads: attention heads M.
        num_encoder_layers: encoder depth.
        num_decoder_layers: decoder depth D.
        feedforward_channels: FFN hidden width.
        dropout: dropout everywhere in encoder and decoder.
        activation: FFN activation, ``'relu'`` or ``'gelu'``.
        enc_num_points: sampling points K per head and level in the encoder.
        dec_num_points: sampling points K per head and level in the decoder.
        multi_scale_attention: see above.
        num_queries: decoder queries (two-stage: proposals kept).
        num_feature_levels: L.
        with_box_refine: refine references layer by layer with the given ``reg_branches``.
        as_two_stage: queries from encoder proposals scored and regressed by the head's last
            branches (the head requires ``with_box_refine`` for it, as the official code).
        with_cp: activation checkpointing of every encoder and decoder layer in training
            (``True``), or of one of the two (``'encoder'``, where the activations grow with the
            image; ``'decoder'``): less memory for one more forward of each such layer, the same
            gradients (``docs/performance.md`` has the memory table).
        init_cfg: mmengine initialisation config.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        feedforward_channels: int = 1024,
        dropout: float = 0.1,
        activation: str = 'relu',
        enc_num_points: int = 4,
        dec_num_points: int = 4,
        multi_scale_attention: bool = True,
        num_queries: int = 300,
        num_feature_levels: int = 4,
        with_box_refine: bool = False,
        as_two_stage: bool = False,
        with_cp: Union[bool, str] = False,
        init_cfg: Optional[dict] = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if with_cp not in (False, True, 'encoder', 'decoder'):
            raise ValueError(f"with_cp must be a bool, 'encoder' or 'decoder', got {with_cp!r}")
        if embed_dims % num_heads:
            raise ValueError(
                f'embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})'
            )
        if embed_dims % 4:
            raise ValueError(
                f'embed_dims ({embed_dims}) must be divisible by 4: the sine '
                'embeddings use embed_dims / 2 features per coordinate in sin/cos '
                'pairs'
            )
        self.embed_dims = embed_dims
        self.num_decoder_layers = num_decoder_layers
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.with_box_refine = with_box_refine
        self.as_two_stage = as_two_stage

        layer_args = dict(
            embed_dims=embed_dims,
            num_heads=num_heads,
            num_levels=num_feature_levels,
            feedforward_channels=feedforward_channels,
            dropout=dropout,
            activation=activation,
            multi_scale_attention=multi_scale_attention,
        )
        # one layer each, cloned (the official _get_clones); _reset_parameters re-draws each copy
        self.encoder = DeformableEncoder(
            DeformableEncoderLayer(num_points=enc_num_points, **layer_args),
            num_encoder_layers,
            with_cp=with_cp in (True, 'encoder'),
        )
        self.decoder = DeformableDecoder(
            DeformableDecoderLayer(num_points=dec_num_points, **layer_args),
            num_decoder_layers,
            with_cp=with_cp in (True, 'decoder'),
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, embed_dims))
        if as_two_stage:
            self.enc_output = nn.Linear(embed_dims, embed_dims)
            self.enc_output_norm = nn.LayerNorm(embed_dims)
            self.pos_trans = nn.Linear(2 * embed_dims, 2 * embed_dims)
            self.pos_trans_norm = nn.LayerNorm(2 * embed_dims)
        else:
            # columns [:C] are the positional query, [C:] the content query
            self.query_embed = nn.Embedding(num_queries, 2 * embed_dims)
            self.reference_points = nn.Linear(embed_dims, 2)
        # a freshly built transformer is initialised as the official one, even without a runner
        self._reset_parameters()

    def init_weights(self) -> None:
        """Official initialisation, then ``init_cfg`` (if any) on top of it."""
        self._reset_parameters()
        super().init_weights()

    def _reset_parameters(self) -> None:
        """The official initialisation: Xavier for matrices, the deformable attentions' own
        scheme, zero-bias reference-point layer, normal level and query embeddings."""
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):  # SingleScaleDeformAttn included
                module.init_weights()
        nn.init.normal_(self.level_embed)
        if not self.as_two_stage:
            # the official code keeps nn.Embedding's N(0, 1) for the queries
            nn.init.normal_(self.query_embed.weight)
            nn.init.zeros_(self.reference_points.bias)

    def forward(
        self,
        mlvl_feats: Sequence[Tensor],
        mlvl_masks: Sequence[Tensor],
        mlvl_pos_embeds: Sequence[Tensor],
        reg_branches: Optional[Sequence[nn.Module]] = None,
        cls_branches: Optional[Sequence[nn.Module]] = None,
        exclude_padded_proposals: bool = False,
    ) -> Dict[str, Optional[Tensor]]:
        """Args:
            mlvl_feats: L tensors ``(bs, C, H_l, W_l)``.
            mlvl_masks: L bool tensors ``(bs, H_l, W_l)``, True at padding.
            mlvl_pos_embeds: L tensors ``(bs, C, H_l, W_l)`` sine positional embeddings.
            reg_branches: the head's regression branches ``(bs, n, C) -> (bs, n, 4)``; needed
                for refinement (first D) and two-stage (index D).
            cls_branches: the head's classification branches; index D scores two-stage
                proposals (channel 0 = objectness). Needed for two-stage only.
            exclude_padded_proposals: two-stage never keeps a padded token as a query (see
                ``two_stage.proposal_queries``); False is the official selection.

        Returns:
            dict with ``hidden_states (D, bs, nq, C)``, ``init_reference (bs, nq, 2|4)``,
            ``inter_references (D, bs, nq, 2|4)`` (sigmoid space; detached when refined),
            ``enc_outputs_class (bs, N, num_classes)`` and ``enc_outputs_coord (bs, N, 4)``
            sigmoid ``(cx, cy, w, h)`` (two-stage only, else None).
        """
        self._check_branches(reg_branches, cls_branches)
        encoder_inputs, spatial_shapes, level_start_index, valid_ratios = self.pre_transformer(
            mlvl_feats, mlvl_masks, mlvl_pos_embeds
        )
        padding_mask = encoder_inputs['padding_mask']
        memory = self.encoder(
            encoder_inputs['feat'],
            encoder_inputs['feat_pos'],
            padding_mask,
            spatial_shapes,
            level_start_index,
            valid_ratios,
        )
        decoder_inputs, enc_outputs = self.pre_decoder(
            memory,
            padding_mask,
            spatial_shapes,
            reg_branches,
            cls_branches,
            exclude_padded_proposals,
        )
        hidden_states, inter_references = self.decoder(
            **decoder_inputs,
            memory=memory,
            memory_padding_mask=padding_mask,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            valid_ratios=valid_ratios,
            reg_branches=reg_branches if self.with_box_refine else None,
        )
        return dict(
            hidden_states=hidden_states,
            init_reference=decoder_inputs['reference_points'],
            inter_references=inter_references,
            **enc_outputs,
        )

    def _check_branches(
        self,
        reg_branches: Optional[Sequence[nn.Module]],
        cls_branches: Optional[Sequence[nn.Module]],
    ) -> None:
        """Fail early, naming the missing collaborator, instead of an IndexError mid-forward (the
        one check of the branches handed in; the decoder and the head rely on it)."""
        needed_reg = (self.num_decoder_layers if self.with_box_refine else 0) + self.as_two_stage
        if needed_reg and (reg_branches is None or len(reg_branches) < needed_reg):
            raise ValueError(
                f'with_box_refine={self.with_box_refine}, as_two_stage='
                f'{self.as_two_stage} need {needed_reg} reg_branches, got '
                f'{None if reg_branches is None else len(reg_branches)}'
            )
        if self.as_two_stage and (
            cls_branches is None or len(cls_branches) <= self.num_decoder_layers
        ):
            raise ValueError(f'as_two_stage needs {self.num_decoder_layers + 1} cls_branches')

    def pre_transformer(
        self,
        mlvl_feats: Sequence[Tensor],
        mlvl_masks: Sequence[Tensor],
        mlvl_pos_embeds: Sequence[Tensor],
    ) -> Tuple[Dict[str, Tensor], List[Tuple[int, int]], Tensor, Tensor]:
        """Flatten the levels into one token sequence.

        Returns:
            encoder inputs ``feat (bs, N, C)``, ``feat_pos (bs, N, C)`` (positional embedding
            + level embedding), ``padding_mask (bs, N)``; ``spatial_shapes``: L Python
            ``(H_l, W_l)`` pairs;
            ``level_start_index (L,)`` long; ``valid_ratios (bs, L, 2)``.
        """
        if (
            not len(mlvl_feats)
            == len(mlvl_masks)
            == len(mlvl_pos_embeds)
            == self.num_feature_levels
        ):
            raise ValueError(
                f'expected {self.num_feature_levels} feature levels, got '
                f'{len(mlvl_feats)} features, {len(mlvl_masks)} masks, '
                f'{len(mlvl_pos_embeds)} positional embeddings'
            )
        feats: List[Tensor] = []
        positions: List[Tensor] = []
        masks: List[Tensor] = []
        for level, (feat, mask, pos_embed) in enumerate(
            zip(mlvl_feats, mlvl_masks, mlvl_pos_embeds)
        ):
            if feat.shape[1] != self.embed_dims:
                raise ValueError(
                    f'level {level} has {feat.shape[1]} channels, expected '
                    f'embed_dims={self.embed_dims}'
                )
            feats.append(feat.flatten(2).transpose(1, 2))
            positions.append(
                pos_embed.flatten(2).transpose(1, 2).to(feat.dtype)
                + self.level_embed[level].to(feat.dtype)
            )
            masks.append(mask.flatten(1))
        # Python ints, not a tensor: they stay symbolic under torch.export, so an exported graph
        # keeps a dynamic height and width (ops/shapes.py); every consumer takes both forms
        spatial_shapes = [(feat.shape[-2], feat.shape[-1]) for feat in mlvl_feats]
        sizes = shapes_tensor(spatial_shapes, mlvl_feats[0].device).prod(1)
        level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        # at least float32: under bf16 autocast the features are bf16, whose 8-bit mantissa
        # would misplace reference points by a fraction of a pixel on large maps
        precise = torch.promote_types(mlvl_feats[0].dtype, torch.float32)
        valid_ratios = torch.stack(
            [valid_ratios_from_mask(mask, precise) for mask in mlvl_masks], 1
        )
        encoder_inputs = dict(
            feat=torch.cat(feats, 1),
            feat_pos=torch.cat(positions, 1),
            padding_mask=torch.cat(masks, 1),
        )
        return encoder_inputs, spatial_shapes, level_start_index, valid_ratios

    def pre_decoder(
        self,
        memory: Tensor,
        padding_mask: Tensor,
        spatial_shapes: SpatialShapes,
        reg_branches: Optional[Sequence[nn.Module]],
        cls_branches: Optional[Sequence[nn.Module]],
        exclude_padded_proposals: bool = False,
    ) -> Tuple[Dict[str, Tensor], Dict[str, Optional[Tensor]]]:
        """Make the decoder's queries; two-stage proposals are made here.

        Args:
            memory: ``(bs, N, C)`` encoder output.
            padding_mask: ``(bs, N)`` bool, True at padding.
            spatial_shapes: ``(H_l, W_l)`` per level.
            reg_branches, cls_branches: the head's branches (two-stage uses index D).
            exclude_padded_proposals: no padded token becomes a two-stage query.

        Returns:
            decoder inputs ``query (bs, nq, C)``, ``query_pos (bs, nq, C)``,
            ``reference_points`` ``(bs, nq, 4)`` two-stage boxes or ``(bs, nq, 2)`` points;
            and ``enc_outputs_class (bs, N, num_classes)`` / ``enc_outputs_coord (bs, N, 4)``
            (None unless two-stage).
        """
        batch_size = memory.shape[0]
        if not self.as_two_stage:
            query_pos, query = self.query_embed.weight.to(memory.dtype).split(
                self.embed_dims, dim=1
            )
            query_pos = query_pos[None].expand(batch_size, -1, -1)
            query = query[None].expand(batch_size, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()
            return (
                dict(query=query, query_pos=query_pos, reference_points=reference_points),
                dict(enc_outputs_class=None, enc_outputs_coord=None),
            )

        output_memory, proposals_unact = encoder_proposals(
            memory, padding_mask, spatial_shapes, self.enc_output, self.enc_output_norm
        )
        enc_outputs_class = cls_branches[self.num_decoder_layers](output_memory)
        enc_coords_unact = reg_branches[self.num_decoder_layers](output_memory) + proposals_unact
        query, query_pos, reference_points = proposal_queries(
            enc_outputs_class,
            enc_coords_unact,
            self.num_queries,
            self.pos_trans,
            self.pos_trans_norm,
            padding_mask if exclude_padded_proposals else None,
        )
        return (
            dict(query=query, query_pos=query_pos, reference_points=reference_points),
            dict(enc_outputs_class=enc_outputs_class, enc_outputs_coord=enc_coords_unact.sigmoid()),
        )
