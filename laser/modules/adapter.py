"""The adapter and its self-cross training (LASER.md §4).

The adapter maps dense CLIP tokens (every iteration) and rendered NeRF features (after the cross-training start,
iteration 8000) through one shared module: an unscaled single-head attention over the whole batch of tokens, a
bottleneck MLP, a 0.2 / 0.8 mix with the centred input, and scalar EMA centring of input and output (§4.1).
Self-cross training (§4.3) ties the adapted features to the centred originals of their own and of the other modality.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_code(n: int, dim: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Transformer positional code ``[n, dim]`` for positions 0..n-1: sin on even channels, cos on odd, base 10000.

    Computed for any ``n`` (the official code precomputes 8192 rows and breaks beyond them, §13.1); ``dim`` is even.
    """
    position = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    code = torch.empty(n, dim, device=device)
    code[:, 0::2] = torch.sin(position * frequency)
    code[:, 1::2] = torch.cos(position * frequency)
    return code.to(dtype) if dtype is not None else code


class Adapter(nn.Module):
    """§4.1, for any number of tokens N.

    Args:
        dim: token width (512).
        reduction: bottleneck factor; the bottleneck is ``dim -> dim / reduction -> dim``.
        attn_dim: width of the single attention head (32).
        ratio: weight of the adapted branch in the output mix (0.2; the centred input gets ``1 - ratio``).
        momentum: EMA momentum of the scalar centring statistics (0.9).
        update_stats_in_eval: also update ``mu_in`` / ``mu_out`` in eval mode, as the official code does (§13.7).
            Off by default: our ruling evaluates without the adapter, and an evaluation pass that did use it should
            not move the training statistics.
        bound_branch: NOT in the paper. Rescale each row of the adapted branch to the norm of its centred input, so
            the branch is at most ``ratio / (1 - ratio)`` of the output. Every Laser loss is a cosine, so nothing else
            bounds the branch, and in the self-cross phase it grows into one vector shared by all rows
            (experiments/RESULTS.md, "Cross-training collapse"). Off by default: a deviation awaiting a ruling.

    Buffers ``mu_in`` and ``mu_out`` (scalars, saved in the state dict) are shared by every caller: in Laser, CLIP
    tokens and NeRF features update the same statistics, in call order.
    """

    def __init__(self, dim: int = 512, reduction: int = 2, attn_dim: int = 32, ratio: float = 0.2,
                 momentum: float = 0.9, update_stats_in_eval: bool = False, bound_branch: bool = False):
        super().__init__()
        hidden = dim // reduction
        # The final ReLU is the official architecture's (§4.1), not a slip.
        self.bottleneck = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.ReLU())
        self.attn_dim = attn_dim
        self.qkv = nn.Linear(dim, 3 * attn_dim, bias=False)      # W_q | W_k | W_v
        self.attn_out = nn.Linear(attn_dim, dim, bias=False)      # W_o
        self.ratio = ratio
        self.momentum = momentum
        self.update_stats_in_eval = update_stats_in_eval
        self.bound_branch = bound_branch
        self.register_buffer("mu_in", torch.zeros(()))
        self.register_buffer("mu_out", torch.zeros(()))

    def _track(self, stat: Tensor, values: Tensor) -> None:
        if self.training or self.update_stats_in_eval:
            with torch.no_grad():
                stat.lerp_(values.mean().to(stat.dtype), 1.0 - self.momentum)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens ``[N, dim]`` -> ``(x0, x_adapted)``, both ``[N, dim]``: the centred input and the adapted output.

        The attention mixes all N rows (all crops of a batch) and the positional code is indexed by row, so the
        output is not permutation-equivariant in the rows: the official behaviour (§13.7), kept.
        """
        self._track(self.mu_in, x)
        x0 = x - self.mu_in
        h = x + sinusoidal_code(x.shape[0], x.shape[1], x.device, x.dtype)
        q, k, v = self.qkv(h).split(self.attn_dim, dim=-1)
        h = self.attn_out(torch.softmax(q @ k.T, dim=-1) @ v)    # unscaled, as in the official code
        branch = self.bottleneck(h) + h
        if self.bound_branch:
            branch = F.normalize(branch, dim=-1) * x0.norm(dim=-1, keepdim=True)
        y = self.ratio * branch + (1.0 - self.ratio) * x0
        self._track(self.mu_out, y)
        return x0, y - self.mu_out


def mean_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity of ``[N, D]`` tensors, averaged over the N rows."""
    return F.cosine_similarity(a, b, dim=-1).mean()


def self_cross_loss(c0: Tensor, c1: Tensor, f0: Tensor | None = None, f1: Tensor | None = None,
                    self_weight: float = 0.3, cross_weight: float = 0.7) -> Tensor:
    """L_self of §4.3 from the adapter's outputs on CLIP tokens ``(c0, c1)`` and NeRF features ``(f0, f1)``.

    Before the cross-training start (no NeRF pair given): ``-cos(c1, c0)``. After:
    ``-[self_weight·(cos(c1, c0) + cos(f1, sg f0))/2 + cross_weight·(cos(f1, c0) + cos(c1, sg f0))/2]``.
    The centred originals ``c0`` and ``f0`` are targets: no gradient reaches them. (``c0`` comes from the frozen CLIP
    and carries none anyway; ``f0`` would carry one to the NeRF, which the official code stops.)

    All inputs are ``[N, D]``; returns a scalar.
    """
    c0 = c0.detach()
    if f0 is None and f1 is None:
        return -mean_cosine(c1, c0)
    if f0 is None or f1 is None:
        raise ValueError("self_cross_loss needs both f0 and f1, or neither")
    f0 = f0.detach()
    self_term = (mean_cosine(c1, c0) + mean_cosine(f1, f0)) / 2
    cross_term = (mean_cosine(f1, c0) + mean_cosine(c1, f0)) / 2
    return -(self_weight * self_term + cross_weight * cross_term)


def distillation_loss(c1: Tensor, f_hat: Tensor) -> Tensor:
    """L_feat of §4.3: ``-cos(sg c1, f_hat)``; the adapted CLIP tokens ``c1`` teach the NeRF features ``f_hat``
    (``f`` before the cross-training start, the adapted ``f1`` after). ``[N, D]`` each; returns a scalar."""
    return -mean_cosine(c1.detach(), f_hat)
