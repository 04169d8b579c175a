"""The adapter and the self-cross-training losses (LASER.md §4)."""

import math

import pytest
import torch

from laser.modules.adapter import Adapter, distillation_loss, self_cross_loss, sinusoidal_code


def test_parameter_count_is_the_papers():
    assert sum(p.numel() for p in Adapter().parameters()) == 328448


@pytest.mark.parametrize("n", [5, 1152, 9000])
def test_any_number_of_rows(n):
    # 9000 > the official 8192-row positional table: the ruling lifts that limit.
    adapter = Adapter().eval()
    with torch.no_grad():
        x0, x1 = adapter(torch.randn(n, 512))
    assert x0.shape == x1.shape == (n, 512) and torch.isfinite(x1).all()


def test_positional_code_is_the_sinusoidal_table():
    code = sinusoidal_code(7, 8)
    pos, channel = 5, 3                                       # odd channel: cos(pos / 10000^(2·1/8))
    assert math.isclose(code[pos, channel].item(), math.cos(pos / 10000 ** (2 / 8)), rel_tol=1e-6)
    assert math.isclose(code[pos, channel - 1].item(), math.sin(pos / 10000 ** (2 / 8)), rel_tol=1e-6)


def _zeroed() -> Adapter:
    """With all weights zero the adapted branch vanishes: y = 0.8 (x - mu_in)."""
    adapter = Adapter()
    with torch.no_grad():
        for p in adapter.parameters():
            p.zero_()
    return adapter


def test_ema_centring_by_hand():
    adapter = _zeroed()
    x0, x1 = adapter(torch.full((4, 512), 2.0))
    # mu_in = 0.9·0 + 0.1·2 = 0.2; x0 = 1.8; y = 0.8·1.8 = 1.44; mu_out = 0.144; x1 = 1.296
    assert math.isclose(adapter.mu_in.item(), 0.2, rel_tol=1e-6)
    assert math.isclose(adapter.mu_out.item(), 0.144, rel_tol=1e-6)
    torch.testing.assert_close(x0, torch.full((4, 512), 1.8))
    torch.testing.assert_close(x1, torch.full((4, 512), 1.296))
    adapter(torch.full((3, 512), 4.0))
    assert math.isclose(adapter.mu_in.item(), 0.9 * 0.2 + 0.1 * 4.0, rel_tol=1e-6)
    assert set(adapter.state_dict()) >= {"mu_in", "mu_out"}


def test_eval_mode_freezes_the_statistics_unless_asked():
    adapter = _zeroed().eval()
    adapter(torch.full((4, 512), 2.0))
    assert adapter.mu_in.item() == 0.0 and adapter.mu_out.item() == 0.0
    adapter.update_stats_in_eval = True                     # the official behaviour (§13.7)
    adapter(torch.full((4, 512), 2.0))
    assert math.isclose(adapter.mu_in.item(), 0.2, rel_tol=1e-6)


def test_bounded_branch_keeps_the_input_norm():
    # Off (the paper): an inflated branch dominates the output. On: each row's branch has the norm of its centred
    # input, whatever the weights, so the output stays within ratio / (1 - ratio) of the input's direction.
    torch.manual_seed(0)
    x = torch.randn(64, 512)
    for bound in (False, True):
        adapter = Adapter(bound_branch=bound).eval()            # eval: mu_in = mu_out = 0, so x0 = x
        with torch.no_grad():
            for p in adapter.parameters():
                p.mul_(30.0)
            x0, x1 = adapter(x)
        branch = (x1 - 0.8 * x0).norm(dim=-1)
        if bound:
            torch.testing.assert_close(branch, 0.2 * x0.norm(dim=-1))
        else:
            assert (branch > x0.norm(dim=-1)).all()


def test_rows_are_not_permutation_equivariant():
    # Official behaviour: the positional code is indexed by row, so reordering the tokens changes the output.
    torch.manual_seed(0)
    adapter = Adapter().eval()
    x, perm = torch.randn(16, 512), torch.randperm(16)
    with torch.no_grad():
        assert not torch.allclose(adapter(x[perm])[1], adapter(x)[1][perm], atol=1e-5)


def _unit(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_self_cross_loss_values():
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    assert self_cross_loss(_unit(e1), _unit(e1)).item() == pytest.approx(-1.0)
    assert self_cross_loss(_unit(e1, e1), _unit([3.0, 0.0], [-1.0, 0.0])).item() == pytest.approx(0.0)  # (1 - 1) / 2
    # self terms: cos(c1, c0) = 1, cos(f1, f0) = 1; cross terms: cos(f1, c0) = 0, cos(c1, f0) = 0 -> -0.3
    assert self_cross_loss(_unit(e1), _unit(e1), _unit(e2), _unit(e2)).item() == pytest.approx(-0.3)
    # self 0, cross 2 -> -0.7
    assert self_cross_loss(_unit(e1), _unit(e2), _unit(e2), _unit(e1)).item() == pytest.approx(-0.7)
    assert distillation_loss(_unit(e1, e1), _unit(e1, e2)).item() == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        self_cross_loss(_unit(e1), _unit(e1), f0=_unit(e1))


def test_targets_get_no_gradient():
    c0, c1, f0, f1 = (torch.randn(6, 8, requires_grad=True) for _ in range(4))
    (self_cross_loss(c0, c1, f0, f1) + distillation_loss(c1, f1)).backward()
    assert c0.grad is None and f0.grad is None
    assert c1.grad.abs().sum() > 0 and f1.grad.abs().sum() > 0
    c1.grad = None
    distillation_loss(c1, f1).backward()
    assert c1.grad is None


def test_one_training_step_through_both_calls():
    # Laser's pattern: CLIP tokens, then NeRF features, through the same adapter in one step; the in-place EMA
    # updates between the two calls must not break the backward pass.
    torch.manual_seed(0)
    adapter = Adapter()
    clip_tokens, nerf = torch.randn(12, 512), torch.randn(12, 512, requires_grad=True)
    c0, c1 = adapter(clip_tokens)
    f0, f1 = adapter(nerf)
    (self_cross_loss(c0, c1, f0, f1) + distillation_loss(c1, f1)).backward()
    assert nerf.grad.abs().sum() > 0
    for name, p in adapter.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
