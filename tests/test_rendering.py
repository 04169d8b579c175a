import torch

from laser.fields.base import RadianceField
import pytest
from torch import nn

from laser.modules.ltqa import LTQA
from laser.rendering import (composite, composite_affine, composite_packed, composite_sigmoid_linear,
                             compositing_weights, render_in_chunks, render_rays, sample_along_rays, samples_per_ray)


class Wall(RadianceField):
    """Empty space, then an opaque slab at z >= ``depth`` with colour from the position (a test field)."""

    app_dim = 3

    def __init__(self, depth: float = 0.5, sigma: float = 1e4):
        super().__init__(torch.tensor([[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]]))
        self.depth, self.sigma = depth, sigma

    def density(self, xyz):
        return torch.where(xyz[:, 2] >= self.depth, self.sigma, 0.0)

    def app_features(self, xyz):
        return (xyz + 2) / 4

    def color(self, features, viewdirs):
        return features

    def grid_resolution(self):
        return [32, 32, 32]


def rays_along_z(n: int = 8) -> torch.Tensor:
    origins = torch.cat([torch.rand(n, 2) - 0.5, torch.full((n, 1), -1.0)], dim=1)
    return torch.cat([origins, torch.tensor([[0.0, 0.0, 2.0]]).expand(n, 3)], dim=1)


def test_opaque_wall_weights_sum_to_one_at_the_wall():
    out = render_rays(Wall(0.5), rays_along_z(), (0.0, 1.0), 200, distance_scale=1.0)
    torch.testing.assert_close(out["acc"], torch.ones(8))
    # z = -1 + 2t = 0.5 at t = 0.75
    torch.testing.assert_close(out["depth"], torch.full((8,), 0.75), atol=2 / 200, rtol=0)
    first_hit = out["weights"].argmax(dim=1)
    assert (out["points"][torch.arange(8), first_hit, 2] >= 0.5).all()


def test_empty_space_is_transparent_and_shows_background():
    out = render_rays(Wall(depth=5.0), rays_along_z(), (0.0, 1.0), 64, background=torch.tensor([0.2, 0.4, 0.6]))
    torch.testing.assert_close(out["acc"], torch.zeros(8))
    torch.testing.assert_close(out["rgb"], torch.tensor([[0.2, 0.4, 0.6]]).expand(8, 3))
    torch.testing.assert_close(out["depth"], torch.ones(8))


def test_compositing_hand_computed():
    sigma = torch.tensor([[1.0, 2.0, 0.5]])
    deltas = torch.tensor([[0.5, 0.5, 0.0]])
    a1, a2 = 1 - torch.exp(torch.tensor(-0.5)), 1 - torch.exp(torch.tensor(-1.0))
    expected = torch.stack([a1, (1 - a1) * a2, torch.tensor(0.0)])[None]
    torch.testing.assert_close(compositing_weights(sigma, deltas), expected)
    values = torch.tensor([[[1.0], [3.0], [7.0]]])
    torch.testing.assert_close(composite(expected, values), (expected[..., None] * values).sum(1))


def test_jitter_is_shared_by_all_rays_and_within_one_step():
    g = torch.Generator().manual_seed(0)
    t, points = sample_along_rays(rays_along_z(5), 0.0, 1.0, 10, generator=g)
    assert torch.equal(t[0], t[4])
    base = torch.linspace(0, 1, 10)
    assert ((t[0] - base) >= 0).all() and ((t[0] - base) < 0.1).all()
    assert points.shape == (5, 10, 3)


def test_chunked_render_equals_one_pass():
    field, rays = Wall(0.3, sigma=30.0), rays_along_z(50)
    full = render_rays(field, rays, (0.0, 1.0), 32)
    chunked = render_in_chunks(lambda r: render_rays(field, r, (0.0, 1.0), 32), rays, chunk=7)
    for key in ("rgb", "depth", "acc"):
        torch.testing.assert_close(chunked[key], full[key])


def test_alpha_mask_culls_empty_space_without_changing_the_image():
    field, rays = Wall(0.3, sigma=30.0), rays_along_z(20)
    before = render_rays(field, rays, (0.0, 1.0), 64)
    box = field.update_alpha_mask(step_size=0.05, threshold=1e-4)
    assert box[0, 2] >= 0.3 - 4 / 31 - 1e-4        # the empty part is outside the box, up to the 1-cell dilation
    after = render_rays(field, rays, (0.0, 1.0), 64)
    torch.testing.assert_close(after["rgb"], before["rgb"])


def test_samples_per_ray_rule():
    assert samples_per_ray([161, 161, 80], 0.5, 10**6) == 482   # LASER.md §2
    assert samples_per_ray([161, 161, 80], 0.5, 100) == 100


@pytest.mark.parametrize("kind", ["linear", "three_linear", "ltqa_projection"])
def test_composite_affine_matches_compositing_the_mapped_values(kind):
    # The fast path (composite the narrow values, map each ray) against the reference (map every point, composite),
    # in values and in the gradients of the values and of the map's parameters. Ray 2 has no shaded point.
    torch.manual_seed(0)
    affine = {"linear": nn.Linear(6, 40), "three_linear": nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 8),
                                                                        nn.Linear(8, 40)),
              "ltqa_projection": LTQA(in_dim=40, dim=6).out}[kind].double()
    weights = torch.rand(4, 7, dtype=torch.float64)
    mask = torch.rand(4, 7) > 0.4
    mask[2] = False
    values = torch.randn(int(mask.sum()), 6, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 40, dtype=torch.float64)

    def run(fn):
        values.grad = None
        affine.zero_grad()
        out = fn()
        (out * target).sum().backward()
        return out.detach(), values.grad.clone(), [p.grad.clone() for p in affine.parameters()]

    fast = run(lambda: composite_affine(weights, values, mask, affine))
    reference = run(lambda: composite_packed(weights, affine(values), mask))
    torch.testing.assert_close(fast[0], reference[0])
    assert torch.equal(fast[0][2], torch.zeros(40, dtype=torch.float64))      # no point, no feature
    torch.testing.assert_close(fast[1], reference[1])
    for a, b in zip(fast[2], reference[2]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("block", [None, 1, 5, 1000])
@pytest.mark.parametrize("weights_grad", [False, True])
def test_composite_sigmoid_linear_matches_compositing_the_activations(block, weights_grad):
    # The blocked path with recomputed activations against the reference (activations of every point, then
    # composited), in float64: values and the gradients of the inputs, of the map and (when they need one) of the
    # weights, for blocks of one point, blocks that do not divide the points, and one block (min_blocked=0: the
    # blocked path even for these few points). Ray 2 has no point.
    torch.manual_seed(0)
    linear = nn.Linear(6, 40).double()
    weights = torch.rand(4, 7, dtype=torch.float64, requires_grad=weights_grad)
    mask = torch.rand(4, 7) > 0.4
    mask[2] = False
    values = torch.randn(int(mask.sum()), 6, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 40, dtype=torch.float64)

    def run(fn):
        values.grad = weights.grad = None
        linear.zero_grad()
        out = fn()
        (out * target).sum().backward()
        grads = [values.grad, *(p.grad for p in linear.parameters())] + ([weights.grad] if weights_grad else [])
        return out.detach(), [g.clone() for g in grads]

    fast = run(lambda: composite_sigmoid_linear(weights, values, mask, linear, block=block, min_blocked=0))
    reference = run(lambda: composite_packed(weights, torch.sigmoid(linear(values)), mask))
    torch.testing.assert_close(fast[0], reference[0])
    assert torch.equal(fast[0][2], torch.zeros(40, dtype=torch.float64))
    for a, b in zip(fast[1], reference[1], strict=True):
        torch.testing.assert_close(a, b)
