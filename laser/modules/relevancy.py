"""3D-OVS's relevancy supervision (LASER.md §14.2, §14.4 a): per-pixel class relevancy maps of the CLIP pyramid,
and the Jensen-Shannon divergence that compares class distributions.

The relevancy of class c at a pixel is the cosine similarity of the pixel's (L2-normalised) pyramid embedding to
the class text embedding, min-max normalised per scale and per class over the image: each class's map spans
[0, 1], whatever the absolute similarity level of its text embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def relevancy_maps(features: Tensor, text: Tensor, eps: float = 1e-12) -> Tensor:
    """``R_s = T · normalize(F_s)``, min-max normalised per scale and class over the image (§14.2).

    Args:
        features: ``[S, D, H, W]`` per-pixel embeddings of one image (a pyramid teacher's ``maps(view)``).
        text: ``[C, D]`` class text embeddings T.
        eps: floor of a map's range: a constant map becomes 0 instead of 0/0.

    Returns:
        ``[S, C, H, W]`` in [0, 1].
    """
    relevancy = torch.einsum("cd,sdhw->schw", text, F.normalize(features, dim=1))
    low = relevancy.amin(dim=(2, 3), keepdim=True)
    high = relevancy.amax(dim=(2, 3), keepdim=True)
    return (relevancy - low) / (high - low).clamp(min=eps)


def js_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Jensen-Shannon divergence ``½ KL(p‖m) + ½ KL(q‖m)``, ``m = (p + q) / 2``, over the last dimension.

    Takes log-probabilities (``log_softmax`` outputs) so that m's logarithm is computed stably; broadcasts, e.g.
    ``[B, n, 1, C]`` against ``[B, 1, n, C]`` gives all pairs. Returns the broadcast shape without the last
    dimension, in nats (at most log 2).
    """
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    return 0.5 * ((log_p.exp() * (log_p - log_m)).sum(-1) + (log_q.exp() * (log_q - log_m)).sum(-1))
