"""3D-OVS's DINO correlation loss (LASER.md §14.4 b): tokens that DINO finds alike should get alike class
distributions, tokens it finds different should get different ones.

Per crop, over all pairs of its tokens: ``D_ij = cos(dino_i, dino_j) - shift`` splits the pairs into similar
(``D > 0``) and dissimilar (``D < 0``) ones, and ``J_ij = JS(p_i ‖ p_j)`` measures how different their class
distributions are. ``L_pos = Σ D⁺ ⊙ J / #(D⁺ ≠ 0)`` is minimised (similar pairs agree);
``L_neg = Σ D⁻ ⊙ J / #(D⁻ ≠ 0)`` is non-positive and minimised too, which pushes dissimilar pairs apart.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from laser.modules.relevancy import js_divergence


def dino_correlation_loss(dino: Tensor, log_probs: Tensor, shift: float = 0.7) -> tuple[Tensor, Tensor]:
    """``(L_pos, L_neg)`` of §14.4 b.

    Args:
        dino: ``[B, n, K]`` DINO features of the ``n`` tokens of each of ``B`` crops (no gradient needed).
        log_probs: ``[B, n, C]`` log class distributions of the same tokens (3D-OVS: ``log_softmax`` of the
            normalised rendered features against the text embeddings, over the temperature).
        shift: ``dino_shift``, the cosine similarity that separates similar from dissimilar pairs.

    Returns:
        Two scalars; the sums and the nonzero counts run over all pairs of all crops (0 when there is no such pair).
    """
    unit = F.normalize(dino, dim=-1)
    correlation = unit @ unit.transpose(1, 2) - shift                            # D  [B, n, n]
    divergence = js_divergence(log_probs[:, :, None], log_probs[:, None, :])    # J  [B, n, n]
    positive, negative = correlation.clamp(min=0), correlation.clamp(max=0)
    loss_pos = (positive * divergence).sum() / (positive != 0).sum().clamp(min=1)
    loss_neg = (negative * divergence).sum() / (negative != 0).sum().clamp(min=1)
    return loss_pos, loss_neg
