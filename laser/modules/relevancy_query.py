"""Querying a LERF (Kerr et al., ICCV 2023; LASER.md §14.6): relevancy scores against canonical phrases, scale
selection, and the visibility filter applied to the samples before compositing.

Pure functions; :class:`laser.methods.lerf.LerfSegmentation` wires them into rendering.
"""

from __future__ import annotations

import torch
from torch import Tensor


def relevancy(language: Tensor, queries: Tensor, canonical: Tensor) -> Tensor:
    """LERF's relevancy of rendered embeddings ``[..., D]`` to each query ``[C, D]`` against canonical phrases
    ``[K, D]`` (all unit vectors) -> ``[..., C]`` in (0, 1):

        ``min_i exp(phi . q) / (exp(phi . canon_i) + exp(phi . q))``

    how much closer ``phi`` is to the query than to the closest canonical phrase. Each ratio is
    ``sigmoid(phi . q - phi . canon_i)``, so the minimum is ``sigmoid(phi . q - max_i phi . canon_i)``: the same
    value without overflow. LERF's code multiplies the dot products by 10 before this softmax; that sharpens the maps
    but changes neither the argmax over classes nor the scale chosen by :func:`select_scale` (both are monotone in
    ``phi . q - max_i phi . canon_i``), so the paper's form is kept.
    """
    closest_canonical = (language @ canonical.T).amax(dim=-1, keepdim=True)
    return torch.sigmoid(language @ queries.T - closest_canonical)


def select_scale(maps: Tensor) -> tuple[Tensor, Tensor]:
    """LERF's scale selection: per query, the scale whose relevancy map holds the highest value.

    ``maps`` ``[S, N, C]``: relevancy of ``N`` pixels to ``C`` queries at ``S`` scales. Returns the chosen scale
    index per query ``[C]`` (ties: the smallest scale) and each query's map at its scale ``[N, C]``.
    """
    best = maps.amax(dim=1).argmax(dim=0)                                              # [C]
    index = best[None, None, :].expand(1, maps.shape[1], maps.shape[2])
    return best, maps.gather(0, index)[0]


def visible_views(points: Tensor, c2w: Tensor, fx: float, fy: float, height: int, width: int) -> Tensor:
    """Number of cameras ``c2w`` ``[V, 3, 4]`` (OpenGL axes, principal point at the image centre) that see each
    world point ``[P, 3]``: in front of the camera and projected inside its ``width x height`` image. ``[P]`` long.

    LERF discards the samples seen by fewer than five training views: regions no camera constrained hold whatever
    the language field extrapolated there, and would otherwise light up relevancy maps from novel viewpoints.
    """
    rotation, centre = c2w[:, :, :3], c2w[:, :, 3]
    local = torch.einsum("vji,pvj->pvi", rotation, points[:, None, :] - centre[None])  # R^T (x - c): [P, V, 3]
    depth = -local[..., 2]                                                             # cameras look down -z
    in_front = depth > 0
    depth = torch.where(in_front, depth, torch.ones_like(depth))
    col = width / 2 + fx * local[..., 0] / depth
    row = height / 2 - fy * local[..., 1] / depth
    inside = in_front & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    return inside.sum(dim=-1)
