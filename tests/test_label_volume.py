"""The label volume, its targets and the two forms of the CE loss (LASER.md §7)."""

import math

import pytest
import torch
import torch.nn.functional as F

from laser.modules.label_volume import LabelVolume, ce_students, label_ce_loss, label_targets, ray_distribution


def test_parameters_and_slot_activations():
    volume = LabelVolume([6, 5, 4])
    assert sum(p.numel() for p in volume.basis.parameters()) == 12800          # Linear(24 -> 512), §15
    out = volume(torch.rand(10, 3) * 2 - 1)
    assert out.shape == (10, 512) and (out > 0).all() and (out < 1).all()


def test_ray_distribution_is_a_distribution_dense_and_packed():
    torch.manual_seed(0)
    values, weights = torch.rand(4, 7, 512), torch.rand(4, 7) / 7
    mask = weights > 0.05
    pi = ray_distribution(values * mask[..., None], weights)
    torch.testing.assert_close(pi.sum(-1), torch.ones(4))
    assert (pi >= 0).all()
    torch.testing.assert_close(ray_distribution(values[mask], weights, mask), pi)


@pytest.mark.parametrize("min_blocked", [2**22, 0])
def test_volume_ray_distribution_is_that_of_its_activations(min_blocked, monkeypatch):
    # LabelVolume.ray_distribution (what Laser and 3D-OVS call) never forms the [P, K] activations; it must equal
    # ray_distribution of the activations forward gives, on the reference path and on the blocked one.
    import laser.rendering
    original = laser.rendering.composite_sigmoid_linear
    monkeypatch.setattr("laser.modules.label_volume.composite_sigmoid_linear",
                        lambda *args: original(*args, block=7, min_blocked=min_blocked))
    torch.manual_seed(0)
    volume = LabelVolume([5, 6, 4], num_slots=16).double()
    weights = torch.rand(8, 6, dtype=torch.float64)
    mask = weights > 0.3
    xyz = torch.rand(int(mask.sum()), 3, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(volume.ray_distribution(xyz, weights, mask),
                               ray_distribution(volume(xyz), weights, mask))


def test_targets_are_convex_combinations_of_text_coordinates():
    torch.manual_seed(0)
    pi, text = torch.softmax(torch.randn(20, 512), -1), F.normalize(torch.randn(5, 512), dim=-1)
    y, y_t = label_targets(pi, text)
    assert y.shape == (20, 5) and torch.equal(y_t, y.T)
    assert (y >= text.amin(-1) - 1e-6).all() and (y <= text.amax(-1) + 1e-6).all()


def test_intended_ce_by_hand():
    # One student, N = 2 pixels, C = 2 classes, tau = 1, U Tᵀ = I.
    u, text = torch.eye(2), torch.eye(2)
    y = torch.tensor([[0.7, 0.1], [0.2, 0.5]])
    log_z = math.log(1 + math.e)
    hit, miss = 1 - log_z, -log_z                        # log_softmax([1, 0]) = [hit, miss], both axes
    pixel_ce = -((0.7 * hit + 0.1 * miss) + (0.2 * miss + 0.5 * hit)) / 2
    class_ce = -((0.7 * hit + 0.2 * miss) + (0.1 * miss + 0.5 * hit)) / 2 / 2    # mean over classes and pixels
    loss = label_ce_loss([u], text, y, y.T, tau=1.0)
    assert loss.item() == pytest.approx((pixel_ce + class_ce) / 2, rel=1e-6)
    # Students add up; the temperature divides the logits.
    assert label_ce_loss({"a": u, "b": u}, text, y, y.T, tau=1.0).item() == pytest.approx(2 * loss.item(), rel=1e-6)
    assert label_ce_loss([2 * u], text, y, y.T, tau=2.0).item() == pytest.approx(loss.item(), rel=1e-6)


def test_cross_entropy_with_probability_targets_normalises_over_dim_1():
    torch.manual_seed(0)
    x, target = torch.randn(2, 2, 2, 3), torch.rand(2, 2, 2, 3)
    expected = -(target * torch.log_softmax(x, dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(F.cross_entropy(x, target), expected)


def _official_ce4(log_probs: list[float], target: list[float], b: int, g: int, c: int) -> float:
    """CE4 of §7.3 on row-major flat lists viewed as [b, g, g, c]: for every (batch, column j, channel k), a
    log-softmax over the g rows i, weighted by the target; mean over (batch, j, k)."""
    def at(flat: list[float], bb: int, i: int, j: int, k: int) -> float:
        return flat[((bb * g + i) * g + j) * c + k]

    total = 0.0
    for bb in range(b):
        for j in range(g):
            for k in range(c):
                column = [at(log_probs, bb, i, j, k) for i in range(g)]
                log_norm = math.log(sum(math.exp(v) for v in column))
                total -= sum(at(target, bb, i, j, k) * (column[i] - log_norm) for i in range(g))
    return total / (b * g * c)


def test_code_exact_ce_matches_the_official_semantics():
    torch.manual_seed(0)
    b, g, c, tau = 2, 2, 3, 0.2
    n = b * g * g
    text = F.normalize(torch.randn(c, 16), dim=-1).double()
    y, y_t = label_targets(torch.softmax(torch.randn(n, 16), -1).double(), text)
    students = [F.normalize(torch.randn(n, 16), dim=-1).double() for _ in range(2)]
    expected = 0.0
    for u in students:
        logits = u @ text.T / tau
        lp, lp_t = torch.log_softmax(logits, -1), torch.log_softmax(logits.T, -1)
        expected += (_official_ce4(lp.flatten().tolist(), y.flatten().tolist(), b, g, c)
                     + _official_ce4(lp_t.flatten().tolist(), y_t.flatten().tolist(), b, g, c)) / 2
    loss = label_ce_loss(students, text, y, y_t, tau=tau, mode="code_exact", grid=(b, g, g))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert loss.item() != pytest.approx(label_ce_loss(students, text, y, y_t, tau=tau).item(), rel=1e-3)
    with pytest.raises(ValueError):
        label_ce_loss(students, text, y, y_t, mode="code_exact", grid=(b, g, g + 1))


@pytest.mark.parametrize("mode", ["intended", "code_exact"])
def test_gradients_reach_the_label_volume_through_the_targets(mode):
    torch.manual_seed(0)
    volume = LabelVolume([5, 5, 5], num_slots=16)
    weights = torch.rand(8, 6) / 6
    pi = ray_distribution(volume(torch.rand(48, 3) * 2 - 1).reshape(8, 6, 16), weights)
    text = F.normalize(torch.randn(3, 16), dim=-1)
    y, y_t = label_targets(pi, text)
    students = ce_students(torch.randn(8, 16), torch.randn(8, 16))
    label_ce_loss(students, text, y, y_t, mode=mode, grid=(2, 2, 2)).backward()
    for name, p in volume.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_students():
    f_hat, c1 = torch.randn(4, 8), torch.randn(4, 8)
    students = ce_students(f_hat, c1)
    torch.testing.assert_close(students["nerf"].norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(students["mean"], (students["nerf"] + students["clip"]) / 2)
