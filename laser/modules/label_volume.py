"""The label volume, its classification targets and the CE loss that couples them to the students (LASER.md §7).

A low-rank VM volume gives every point a vector of 512 "slot" activations in (0, 1); composited along a ray and
soft-maxed, it is a distribution over slots. Projected on the class text embeddings, it becomes the target of a
two-way (per pixel over classes, per class over pixels) cross-entropy on the class posteriors of the NeRF features,
the adapted CLIP features and their mean. The targets are not detached: the label volume learns through that loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laser.fields.tensorf import VMGrid
from laser.rendering import composite, composite_packed, composite_sigmoid_linear

CE_MODES = ("intended", "code_exact")


class LabelVolume(nn.Module):
    """``ℓ(x) = sigmoid(W_L · VM(x) + b_L)`` (§7.1).

    Args:
        resolution: cells per axis (x, y, z): the stage-1 field's final grid (``field.grid_resolution()``, after
            upsampling and shrinking), so the volume covers the same box at the same detail.
        components: VM components per (plane, line) pair; the density's (16, 4, 4).
        num_slots: number of label slots (512; 3D-OVS's scale selector is the same construct with 3).
        init_scale: standard deviation of the factors' normal initialisation.
        lookup: the VM grid's lookup ("auto", "grid_sample" or "embedding_bag").
    """

    def __init__(self, resolution: Sequence[int], components: tuple[int, int, int] = (16, 4, 4),
                 num_slots: int = 512, init_scale: float = 0.1, lookup: str = "auto"):
        super().__init__()
        self.grid = VMGrid(components, list(resolution), init_scale, lookup)
        self.basis = nn.Linear(sum(components), num_slots)

    def forward(self, xyz: Tensor) -> Tensor:
        """Positions normalised to [-1, 1] over the field's box ``[P, 3]`` -> slot activations ``[P, num_slots]``."""
        return torch.sigmoid(self.basis(self.grid.factors(xyz)))

    def ray_distribution(self, xyz: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        """:func:`ray_distribution` of this volume's activations at the points ``xyz`` ``[P, 3]`` (normalised) of
        ``mask`` ``[R, S]``, weighted by ``weights`` ``[R, S]`` -> ``[R, num_slots]``. The ``[P, num_slots]``
        activations are never stored (:func:`~laser.rendering.composite_sigmoid_linear`); equal up to float
        rounding."""
        return torch.softmax(composite_sigmoid_linear(weights, self.grid.factors(xyz), mask, self.basis), dim=-1)


def ray_distribution(point_values: Tensor, weights: Tensor, mask: Tensor | None = None) -> Tensor:
    """``π(r) = softmax(Σ_i w_i ℓ_i)`` over slots (no temperature), per ray.

    Args:
        point_values: ``[R, S, K]``, or packed ``[P, K]`` for the points where ``mask`` is True.
        weights: rendering weights ``[R, S]``.
        mask: ``[R, S]`` bool, required with packed values; unlisted points contribute 0 (as points under the
            weight threshold do in the official code).

    Returns:
        ``[R, K]``, rows on the probability simplex.
    """
    if mask is None:
        return torch.softmax(composite(weights, point_values), dim=-1)
    return torch.softmax(composite_packed(weights, point_values, mask), dim=-1)


def label_targets(pi: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
    """Targets of §7.2: ``Y = Π Tᵀ`` ``[N, C]`` and ``Yᵗ = T Πᵀ`` ``[C, N]`` (the same numbers, transposed).

    ``pi`` ``[N, K]`` ray distributions, ``text`` ``[C, K]`` class embeddings. Each entry is a convex combination of
    one class embedding's coordinates: it can be negative and rows need not sum to 1. Not detached, on purpose.
    """
    targets = pi @ text.T
    return targets, targets.T


def ce_students(f_hat: Tensor, c1: Tensor) -> dict[str, Tensor]:
    """The three students of §7.3 from NeRF features ``f_hat`` and adapted CLIP tokens ``c1`` (``[N, D]`` each):
    ``F̄ = normalize(f_hat)``, ``C̄ = normalize(c1)`` and their mean ``V`` (not renormalised)."""
    nerf, clip = F.normalize(f_hat, dim=-1), F.normalize(c1, dim=-1)
    return {"nerf": nerf, "clip": clip, "mean": (nerf + clip) / 2}


def _soft_ce(log_probs: Tensor, targets: Tensor) -> Tensor:
    """``-mean over rows of Σ_last targets · log_probs``."""
    return -(targets * log_probs).sum(dim=-1).mean()


def _soft_ce_mean(log_probs: Tensor, targets: Tensor) -> Tensor:
    """``-mean over rows of mean_last targets · log_probs``: the class-wise term, averaged over the N pixels."""
    return -(targets * log_probs).mean()


def _grid_ce(log_probs: Tensor, targets: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
    """The official code's ``F.cross_entropy(view(log_probs), view(targets))`` on ``[B, g, g, C]`` views."""
    return F.cross_entropy(log_probs.reshape(shape), targets.reshape(shape))


def label_ce_loss(students: Mapping[str, Tensor] | Sequence[Tensor], text: Tensor, targets: Tensor,
                  targets_t: Tensor, tau: float = 0.2, mode: str = "intended",
                  grid: tuple[int, int, int] | None = None) -> Tensor:
    """L_rel of §7.3: ``Σ_U ½ [CE(LP_U, Y) + CE(LPᵗ_U, Yᵗ)]`` over the students U.

    With ``LP_U = log_softmax over classes of U Tᵀ / τ`` ``[N, C]`` and ``LPᵗ_U = log_softmax over the N pixels of
    T Uᵀ / τ`` ``[C, N]`` (all pixels of all crops).

    Args:
        students: ``[N, D]`` tensors (e.g. :func:`ce_students`).
        text: ``[C, D]`` class embeddings T.
        targets, targets_t: ``Y`` ``[N, C]`` and ``Yᵗ`` ``[C, N]`` from :func:`label_targets`.
        tau: temperature (0.2).
        mode: "intended": soft-target cross-entropy over classes (per pixel) and over pixels (per class), the
            ruling's default. Ours: the class-wise term AVERAGES over the N pixels where §7.3 writes a sum. Summed,
            it grows with N and, as the targets are not detached and can be negative, the label volume drives it
            down without bound: with N = 1024 rays per step it reached -231 in 150 steps and the segmentation
            collapsed to 0.2 % mIoU (experiments/RESULTS.md). Averaged, both terms have the scale of one
            per-pixel cross-entropy, as in the official code, whose class axis holds g = 16 entries.
            "code_exact": the official computation, for comparison: each ``[N, C]`` or ``[C, N]``
            matrix, prediction and target alike, is flattened row-major and viewed as ``[B, g, g, C]``, then given to
            ``F.cross_entropy`` with probability targets, which takes dim 1 (the patch-row axis) as the class axis
            and applies a second log-softmax over it. For the ``[C, N]`` matrices the view scrambles positions (the
            same way for prediction and target).
        grid: ``(B, g, g)``, crops and tokens per side with ``B·g·g = N``; needed by "code_exact" only.

    Returns:
        A scalar.
    """
    if mode not in CE_MODES:
        raise ValueError(f"mode must be one of {CE_MODES}, not {mode!r}")
    if mode == "code_exact":
        if grid is None or grid[0] * grid[1] * grid[2] != targets.shape[0]:
            raise ValueError(f"code_exact needs grid=(B, g, g) with B*g*g = N = {targets.shape[0]}, got {grid}")
        pixel_ce = class_ce = partial(_grid_ce, shape=(*grid, targets.shape[1]))
    else:
        pixel_ce, class_ce = _soft_ce, _soft_ce_mean
    values = students.values() if isinstance(students, Mapping) else students
    total = targets.new_zeros(())
    for student in values:
        logits = student @ text.T / tau                                   # [N, C]
        total = total + (pixel_ce(torch.log_softmax(logits, dim=-1), targets)
                         + class_ce(torch.log_softmax(logits.T, dim=-1), targets_t)) / 2
    return total
