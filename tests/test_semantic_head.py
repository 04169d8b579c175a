"""The semantic head (LASER.md §5): Laser's SiLU MLP and 3D-OVS's purely linear stack."""

import pytest
import torch

from laser.modules.semantic_head import SemanticHead


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("activation", ["silu", None])
def test_parameter_count_is_the_papers(activation):
    assert n_params(SemanticHead(activation=activation)) == 86144


def _affine_defect(head: SemanticHead) -> float:
    """How far ``head(a x + b y) - head(0)`` is from ``a (head(x) - head(0)) + b (head(y) - head(0))``."""
    x, y, zero = torch.randn(64, 27), torch.randn(64, 27), torch.zeros(1, 27)
    lhs = head(2.0 * x - 3.0 * y) - head(zero)
    rhs = 2.0 * (head(x) - head(zero)) - 3.0 * (head(y) - head(zero))
    return (lhs - rhs).abs().max().item()


def test_linear_variant_is_affine_and_the_silu_one_is_not():
    torch.manual_seed(0)
    assert _affine_defect(SemanticHead(activation=None)) < 1e-4     # linear up to the biases
    assert _affine_defect(SemanticHead(activation="silu")) > 1e-2


def test_shapes_and_unknown_activation():
    assert SemanticHead()(torch.randn(10, 27)).shape == (10, 512)
    with pytest.raises(ValueError):
        SemanticHead(activation="gelu_typo")


def test_hidden_then_last_is_the_head():
    torch.manual_seed(0)
    head = SemanticHead()
    x = torch.randn(5, 27)
    torch.testing.assert_close(head.last(head.hidden(x)), head(x))
    assert head.last is head.net[-1] and not head.affine and SemanticHead(activation=None).affine
