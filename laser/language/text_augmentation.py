"""Laser's simplified text augmentation, the pure parts (LASER.md §8): prompt repetition and the min-max
standardisation of relevancy maps. The loss that uses them lives with the losses.
"""

from __future__ import annotations

from collections.abc import Sequence

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
