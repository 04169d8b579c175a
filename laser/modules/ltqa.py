"""Low-rank transient query attention, LTQA (LASER.md §6).

Every valid sample point of a render chunk attends to M learnable "transient queries" (agents) and back, so the cost
is O(N_p·M·d) instead of the O(N_p²·d) of self-attention over the chunk:

    Q, K, V = X W_q, X W_k, X W_v                       [N_p, d]
    A1 = softmax over the M agents of Q Pᵀ               [N_p, M]
    A2 = softmax over the N_p points of P Kᵀ             [M, N_p]
    Y  = (A1 (A2 V) + Q) W_u                             [N_p, 512]

There is no 1/sqrt(d) scaling, a single head, and the only residual is to Q in d-space: the output has rank <= d,
hence "low-rank".

Because A2 normalises over every point it is given, the output for a point depends on which other points share
its call. That is the specified behaviour (§6, and the rulings): call it once per render chunk, with all valid points
of all rays in the chunk, and keep the chunk size the same in training and evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LTQA(nn.Module):
    """Args:
        in_dim: width of the per-point semantic features (512).
        dim: inner width d (``embed_dim``: 48 for bed/lawn/room/table, 64 for bench/sofa).
        num_queries: number M of transient queries; None gives the paper's 3d.
    """

    def __init__(self, in_dim: int = 512, dim: int = 48, num_queries: int | None = None):
        super().__init__()
        self.dim = dim
        # W_q, W_k, W_v stacked as one matmul (output columns q | k | v); same parameters as three 512 -> d maps.
        self.qkv = nn.Linear(in_dim, 3 * dim, bias=False)
        self.queries = nn.Parameter(torch.empty(3 * dim if num_queries is None else num_queries, dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.out = nn.Linear(dim, in_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """All valid points of one render chunk ``[N_p, in_dim]`` -> ``[N_p, in_dim]`` (``[0, in_dim]`` if empty)."""
        return self.out(self.mix(x))

    def mix(self, x: Tensor) -> Tensor:
        """``A1 (A2 V) + Q`` ``[N_p, d]``, before the linear map ``W_u`` (``self.out``, no bias): a renderer may
        composite this narrow mix along the rays and apply ``W_u`` per ray
        (:func:`laser.rendering.composite_affine`)."""
        return self._attend(self.qkv(x))

    def mix_after(self, linear: nn.Linear, h: Tensor) -> Tensor:
        """``mix(linear(h))`` without the ``in_dim``-wide ``linear(h)``: ``W_qkv (W h + b) = (W_qkv W) h + W_qkv b``
        is one map of ``h`` ``[N_p, k]`` to ``3d`` (for Laser's semantic head, 128 -> 144 instead of 128 -> 512 ->
        144). Equal to ``mix(linear(h))`` up to float rounding, in values and gradients (``tests/test_ltqa.py``)."""
        bias = None if linear.bias is None else self.qkv.weight @ linear.bias
        return self._attend(F.linear(h, self.qkv.weight @ linear.weight, bias))

    def _attend(self, qkv: Tensor) -> Tensor:
        """``[N_p, 3d]`` stacked Q | K | V -> ``A1 (A2 V) + Q`` ``[N_p, d]`` (``[0, d]`` if empty)."""
        if qkv.shape[0] == 0:
            return qkv.new_zeros(0, self.dim)
        q, k, v = qkv.split(self.dim, dim=-1)
        point_to_agent = torch.softmax(q @ self.queries.T, dim=-1)    # A1 [N_p, M]
        agent_to_point = torch.softmax(self.queries @ k.T, dim=-1)    # A2 [M, N_p]
        return point_to_agent @ (agent_to_point @ v) + q
