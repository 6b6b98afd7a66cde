"""Deformable attention WITHOUT cross-level mixing (the ``multi_scale_attention=False`` ablation).

In multi-scale deformable attention (paper Eq. 3) the attention weights of one head are normalised
jointly over all ``L * K`` sampled points, so a query can trade information between levels. The
ablation in the paper's Table 2 removes that exchange. Decoder queries belong to no feature level,
so here each level is attended independently (softmax over the ``K`` points of that level only)
and the ``L`` per-level results are averaged:

    out = W_o * mean_l sum_k softmax_k(A_{l,k}) * W_v x_l(p + dp_{l,k})

The averaging is folded into the weights (``softmax / L``), so one call of the sampling operator
does all levels at once. Everything else (parameters, initialisation, sampling locations, checks)
is ``MSDeformAttn``'s, so the state-dict layout does not change with the ablation.
"""
from torch import Tensor

from .msdeform_attn import MSDeformAttn


class LevelwiseDeformAttn(MSDeformAttn):
    """Deformable attention that samples every level independently and averages the levels.

    Arguments, inputs and outputs as :class:`MSDeformAttn`; only the normalisation of the
    attention weights differs.
    """

    def _normalise_weights(self, logits: Tensor) -> Tensor:
        """Softmax over the K points of each level separately, divided by L (the level mean).

        Args:
            logits: ``(bs, nq, M, L, K)``.

        Returns:
            ``(bs, nq, M, L, K)`` weights; each level's K weights sum to ``1 / L``.
        """
        return logits.softmax(-1) / self.num_levels
