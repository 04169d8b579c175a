"""Laser's simplified text augmentation (LASER.md §8): prompt repetition, the min-max standardisation of relevancy
maps, and the loss that aligns the adapted CLIP tokens' relevancy with the standardised, repeated-prompt one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor


def repeat_prompts(prompts: Sequence[str], repeats: int = 2) -> list[str]:
    """Each prompt ``p`` repeated ``repeats`` times, joined by one space: ``"p p"`` for the paper's 2."""
    if repeats < 1:
        raise ValueError(f"prompt repeats must be >= 1, not {repeats}")
    return [" ".join([p] * repeats) for p in prompts]


def minmax_standardize(relevancy: Tensor, dim: int, eps: float = 0.0) -> Tensor:
    """``(Z - min Z) / (max Z - min Z)`` along ``dim``: every slice along ``dim`` spans [0, 1].

    §8 uses it twice on ``Z = c0 T̃ᵀ`` ``[N, C]``: along classes per pixel (``dim=-1``) and along the N pixels per
    class (``dim=0``, equivalently ``Zᵗ`` along its last dim). The official code has no ``eps`` and divides by 0
    when a slice is constant (e.g. C = 1); ``eps > 0`` guards that.
    """
    low = relevancy.amin(dim=dim, keepdim=True)
    high = relevancy.amax(dim=dim, keepdim=True)
    return (relevancy - low) / (high - low + eps)


def relevancy_targets(features: Tensor, repeated_text: Tensor, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """The two standardised relevancy targets of §8.

    Args:
        features: ``[N, D]`` CLIP tokens (EMA-centred in Laser), not normalised.
        repeated_text: ``[C, D]`` T̃, the embeddings of the repeated prompts.

    Returns:
        ``Ẑ`` ``[N, C]`` standardised over classes per pixel, and ``Ẑᵗ`` ``[C, N]`` standardised over pixels per
        class.
    """
    relevancy = features @ repeated_text.T
    return minmax_standardize(relevancy, dim=-1, eps=eps), minmax_standardize(relevancy.T, dim=-1, eps=eps)


def text_augmentation_loss(c1: Tensor, c0: Tensor, text: Tensor, text_repeated: Tensor,
                           eps: float = 1e-6) -> Tensor:
    """L_aug of §8: ``-½ [mean_n cos_c(R[n], Ẑ[n]) + mean_c cos_n(Rᵗ[c], Ẑᵗ[c])]``.

    ``R = c1 Tᵀ`` is the relevancy of the adapted tokens to the original prompts; ``Ẑ``, ``Ẑᵗ`` are the targets of
    :func:`relevancy_targets` on the centred tokens and the repeated prompts. Gradients reach ``c1`` only.

    Args:
        c1: ``[N, D]`` adapted CLIP tokens (unnormalised).
        c0: ``[N, D]`` centred CLIP tokens (the adapter's first output).
        text: ``[C, D]`` T, embeddings of the class prompts.
        text_repeated: ``[C, D]`` T̃, embeddings of the repeated prompts.
        eps: added to the min-max range. Each target row is scaled by its own range and only enters through a
            cosine, so ``eps`` changes nothing unless a row is constant; there the official code (no ``eps``)
            gives NaN, and ``eps > 0`` gives a zero target row, whose cosine is 0: that row stops contributing.
            With a single class (C = 1) every per-pixel row is constant, the per-pixel term is 0 and the loss is
            ``-½ mean_c cos_n(Rᵗ[c], Ẑᵗ[c])``. ``eps = 0`` reproduces the official NaN.

    Returns:
        A scalar.
    """
    per_pixel, per_class = relevancy_targets(c0.detach(), text_repeated.detach(), eps=eps)
    relevancy = c1 @ text.detach().T
    return -(F.cosine_similarity(relevancy, per_pixel, dim=-1).mean()
             + F.cosine_similarity(relevancy.T, per_class, dim=-1).mean()) / 2
