"""The simplified text augmentation loss (LASER.md §8)."""

import math

import pytest
import torch
import torch.nn.functional as F

from laser.language.text_augmentation import text_augmentation_loss

SWAP = torch.tensor([[0.0, 1.0], [1.0, 0.0]])


def test_value_by_hand():
    # Z = c0 T̃ᵀ = [[3, 1], [0, 2]] -> standardised per pixel [[1, 0], [0, 1]], per class [[1, 0], [0, 1]].
    c0, text_repeated = torch.tensor([[1.0, 3.0], [2.0, 0.0]]), SWAP
    c1, text = torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.eye(2)     # R = [[2, 1], [0, 1]]
    per_pixel = (2 / math.sqrt(5) + 1) / 2                  # cos([2, 1], [1, 0]), cos([0, 1], [0, 1])
    per_class = (1 + 1 / math.sqrt(2)) / 2                  # cos([2, 0], [1, 0]), cos([1, 1], [0, 1])
    loss = text_augmentation_loss(c1, c0, text, text_repeated)
    assert loss.item() == pytest.approx(-(per_pixel + per_class) / 2, rel=1e-6)


def test_gradient_reaches_c1_only():
    torch.manual_seed(0)
    c1, c0 = torch.randn(10, 8, requires_grad=True), torch.randn(10, 8, requires_grad=True)
    text, text_repeated = (F.normalize(torch.randn(3, 8), dim=-1).requires_grad_() for _ in range(2))
    text_augmentation_loss(c1, c0, text, text_repeated).backward()
    assert c0.grad is None and text.grad is None and text_repeated.grad is None
    assert c1.grad.abs().sum() > 0


def test_eps_changes_nothing_unless_a_row_is_constant():
    torch.manual_seed(0)
    c1, c0, text, text_repeated = torch.randn(10, 8), torch.randn(10, 8), torch.randn(3, 8), torch.randn(3, 8)
    official = text_augmentation_loss(c1, c0, text, text_repeated, eps=0.0)
    assert text_augmentation_loss(c1, c0, text, text_repeated).item() == pytest.approx(official.item(), rel=1e-5)


def test_single_class_keeps_the_per_class_half():
    # C = 1: every per-pixel min-max range is 0. The official code (eps = 0) gives NaN; with eps the per-pixel
    # targets are zero rows (cosine 0) and only the per-class half remains.
    torch.manual_seed(0)
    c1, c0, text, text_repeated = torch.randn(10, 8), torch.randn(10, 8), torch.randn(1, 8), torch.randn(1, 8)
    assert torch.isnan(text_augmentation_loss(c1, c0, text, text_repeated, eps=0.0))
    z = (c0 @ text_repeated.T).T
    per_class = F.cosine_similarity((c1 @ text.T).T, (z - z.min()) / (z.max() - z.min()), dim=-1).mean()
    loss = text_augmentation_loss(c1, c0, text, text_repeated)
    assert loss.item() == pytest.approx(-per_class.item() / 2, rel=1e-5)
