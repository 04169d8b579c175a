import pytest
import torch

from laser.fields.tensorf import (TensorVMField, VMGrid, log_spaced_voxels, sample_embedding_bag,
                                  sample_grid_sample, sample_trilinear, total_variation, vertex_major_moments,
                                  voxels_to_resolution)

AABB = [[-1.5, -1.67, -1.0], [1.5, 1.67, 1.0]]


@pytest.mark.parametrize("shape", [(1, 7, 9, 5), (1, 11, 1, 3)])          # [1, H, W, C]: a plane, a line
def test_embedding_bag_lookup_matches_grid_sample_values_and_gradients(shape):
    torch.manual_seed(0)
    grid = torch.randn(shape, requires_grad=True)
    line = shape[2] == 1
    coords = torch.rand(300, 2) * 2 - 1
    coords[:, 0] = 0 if line else coords[:, 0]
    coords[:4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]]) * (
        torch.tensor([0.0, 1.0]) if line else 1)
    ref = sample_grid_sample(grid, coords)
    fast = sample_embedding_bag(grid, coords)
    torch.testing.assert_close(fast, ref)
    weights = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), grid)
    (g_fast,) = torch.autograd.grad((fast * weights).sum(), grid)
    torch.testing.assert_close(g_fast, g_ref)


def test_field_lookups_agree_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    ref = TensorVMField(AABB, n_voxels=32**3, lookup="grid_sample")
    fast = TensorVMField(AABB, n_voxels=32**3, lookup="embedding_bag")
    fast.load_state_dict(ref.state_dict())
    xyz = (torch.rand(500, 3) * 2 - 1) * torch.tensor([1.5, 1.67, 1.0])
    torch.testing.assert_close(fast.density(xyz), ref.density(xyz))
    features = fast.app_features(xyz)
    torch.testing.assert_close(features, ref.app_features(xyz))
    rgb = fast.color(features, torch.nn.functional.normalize(torch.randn(500, 3), dim=-1))
    assert rgb.shape == (500, 3) and (rgb >= 0).all() and (rgb <= 1).all()
    (fast.density(xyz).sum() + rgb.sum()).backward()
    for name, p in fast.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def box_points(n: int) -> torch.Tensor:
    """Points over AABB, its corners among them (the lookups' edge cases)."""
    corners = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=torch.float32)
    unit = torch.cat([corners, torch.rand(n, 3)])
    lo, hi = torch.tensor(AABB)
    return lo + unit * (hi - lo)


def test_dense_grid_is_the_factors_trilinearly():
    double = torch.float64
    # The reference is the factor lookup mixed by the same matrix; in float64 the two agree to its rounding.
    torch.manual_seed(0)
    grid = VMGrid((5, 3, 2), [7, 6, 4]).to(double)
    xyz = (torch.rand(400, 3, dtype=double) * 2 - 1)
    xyz[:8] = torch.tensor([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=double)
    for mix in (torch.ones(1, 10, dtype=double), torch.randn(4, 10, dtype=double)):
        dense = sample_trilinear(grid.dense(mix), [7, 6, 4], xyz)
        torch.testing.assert_close(dense, grid.factors(xyz) @ mix.T, rtol=1e-12, atol=1e-12)


def test_frozen_field_looks_up_dense_grids_with_the_same_values():
    torch.manual_seed(0)
    field = TensorVMField(AABB, n_voxels=24**3).requires_grad_(False)
    reference = TensorVMField(AABB, n_voxels=24**3, dense_when_frozen_mb=0)
    reference.load_state_dict(field.state_dict())
    xyz = box_points(500)
    torch.testing.assert_close(field.density(xyz), reference.density(xyz))
    torch.testing.assert_close(field.app_features(xyz), reference.app_features(xyz))
    assert set(field._dense) == {"density", "app"} and not reference._dense
    # An in-place edit, a load, a resize or a shrink rebuilds the grid (a resize makes new, trainable parameters:
    # frozen again, the field must not serve the old grid).
    with torch.no_grad():
        field.app_grid.planes[0].mul_(2)
        reference.app_grid.planes[0].mul_(2)
    torch.testing.assert_close(field.app_features(xyz), reference.app_features(xyz))
    other = TensorVMField(AABB, n_voxels=24**3)
    field.load_state_dict(other.state_dict())
    reference.load_state_dict(other.state_dict())
    torch.testing.assert_close(field.density(xyz), reference.density(xyz))
    torch.testing.assert_close(field.app_features(xyz), reference.app_features(xyz))
    for change in (lambda f: f.set_resolution(20**3), lambda f: f.shrink(torch.tensor(AABB) * 0.8)):
        for f in (field, reference):
            change(f)
            f.requires_grad_(False)
        inside = box_points(300) * 0.8
        torch.testing.assert_close(field.density(inside), reference.density(inside))
        torch.testing.assert_close(field.app_features(inside), reference.app_features(inside))
        assert set(field._dense) == {"density", "app"}


def test_trained_field_is_dense_only_inside_a_frozen_block():
    torch.manual_seed(0)
    field = TensorVMField(AABB, n_voxels=16**3)
    xyz = box_points(300)
    features = field.app_features(xyz)
    assert features.requires_grad and not field._dense            # factors: the gradient reaches the grids
    optimizer = torch.optim.Adam(field.parameters(), lr=0.1, fused=True)
    for _ in range(2):
        with field.frozen(), torch.no_grad():
            dense = field.app_features(xyz)
            assert "app" in field._dense
        assert not field._dense                                     # dropped at the end of the block
        torch.testing.assert_close(dense, field.app_features(xyz).detach())
        # A fused Adam step changes the grids without a new version: the next block must not reuse the old grid.
        field.app_features(xyz).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()


def test_unfreezing_drops_the_grid_before_a_step_can_change_the_parameters():
    torch.manual_seed(0)
    field = TensorVMField(AABB, n_voxels=16**3).requires_grad_(False)
    xyz = box_points(200)
    field.app_features(xyz)                                          # a grid of frozen parameters
    field.requires_grad_(True)
    optimizer = torch.optim.Adam(field.parameters(), lr=0.1, fused=True)
    field.regularization()["tv_app"].backward()                      # no app_features lookup outside a block
    optimizer.step()
    with field.frozen(), torch.no_grad():
        dense = field.app_features(xyz)
    torch.testing.assert_close(dense, field.app_features(xyz).detach())


def test_dense_grids_respect_their_size_limit():
    field = TensorVMField(AABB, n_voxels=16**3, dense_when_frozen_mb=27 * 16**3 * 4 / 2**20 / 2).requires_grad_(False)
    xyz = box_points(100)
    field.app_features(xyz)
    field.density(xyz)
    assert set(field._dense) == {"density"}                         # the 27-channel grid is over the limit


def test_density_is_nonnegative():
    field = TensorVMField(AABB, n_voxels=16**3)
    assert (field.density(torch.rand(1000, 3) * 2 - 1) >= 0).all()


def test_schedule_numbers_match_the_paper():
    # LASER.md §2: upsampling to 7 012 258; 23 446 908; 78 399 352; 262 144 160 voxels
    assert log_spaced_voxels(2097156, 262144000, 4) == [7012258, 23446908, 78399352, 262144160]
    res = voxels_to_resolution(2097156, torch.tensor(AABB))
    assert abs(res[0] * res[1] * res[2] - 2097156) / 2097156 < 0.05


def test_upsampling_keeps_the_field():
    torch.manual_seed(0)
    field = TensorVMField(AABB, n_voxels=16**3)
    # A smooth field survives bilinear upsampling almost exactly.
    with torch.no_grad():
        for grid in (field.density_grid, field.app_grid):
            for p in [*grid.planes, *grid.lines]:                     # [1, H, W, n]: a ramp along H
                p.copy_(torch.linspace(0.5, 1.0, p.shape[1])[:, None, None].expand_as(p[0]).expand_as(p))
    xyz = (torch.rand(200, 3) * 1.8 - 0.9)
    before = field.density(xyz).detach()
    assert field.set_resolution(40**3)
    assert field.grid_resolution() == voxels_to_resolution(40**3, field.aabb)
    torch.testing.assert_close(field.density(xyz), before, atol=1e-5, rtol=1e-5)


def test_shrink_keeps_values_inside_the_new_box():
    torch.manual_seed(0)
    field = TensorVMField(AABB, n_voxels=24**3)
    box = torch.tensor([[-0.5, -0.6, -0.3], [0.7, 0.4, 0.5]])
    xyz = box[0] + torch.rand(300, 3) * (box[1] - box[0])
    density, app = field.density(xyz).detach(), field.app_features(xyz).detach()
    field.shrink(box)
    assert (field.aabb[0] <= box[0] + 1e-6).all() and (field.aabb[1] >= box[1] - 1e-6).all()
    torch.testing.assert_close(field.density(xyz), density, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(field.app_features(xyz), app, atol=1e-5, rtol=1e-4)


def test_state_round_trip_after_grid_changes():
    torch.manual_seed(0)
    field = TensorVMField(AABB, n_voxels=16**3)
    field.set_resolution(24**3)
    box = field.update_alpha_mask(step_size=0.01, threshold=1e-4)
    field.shrink(box)
    fresh = TensorVMField(AABB, n_voxels=16**3)
    fresh.prepare_for_load(field.state_dict_meta())
    fresh.load_state_dict(field.state_dict())
    xyz = torch.rand(100, 3) * 2 - 1
    torch.testing.assert_close(fresh.density(xyz), field.density(xyz))
    assert torch.equal(fresh.occupied(xyz), field.occupied(xyz))


def test_total_variation_value_and_gradient_match_autograd():
    torch.manual_seed(0)
    planes = [torch.randn(shape, dtype=torch.float64, requires_grad=True)
              for shape in ((1, 7, 9, 5), (1, 2, 6, 3))]
    reference = sum(2 * ((p[:, 1:] - p[:, :-1]).pow(2).mean() + (p[:, :, 1:] - p[:, :, :-1]).pow(2).mean())
                    for p in planes)
    value = total_variation(planes)
    torch.testing.assert_close(value, reference, rtol=1e-12, atol=0)
    for got, want in zip(torch.autograd.grad(3 * value, planes), torch.autograd.grad(3 * reference, planes)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_total_variation_is_zero_for_constant_planes():
    field = TensorVMField(AABB, n_voxels=16**3)
    with torch.no_grad():
        for p in field.density_grid.planes:
            p.fill_(0.3)
    assert field.regularization()["tv_density"].item() == 0.0
    assert field.regularization()["tv_app"].item() > 0.0


def component_major(state: dict, all_modules: bool = False) -> dict:
    """``state`` as the component-major layout wrote it (VMGrid version 1): factors ``[1, n, H, W]``. The grids'
    metadata are those ending ``_grid`` (a field's) or, with ``all_modules``, every module's (a bare grid's)."""
    old = type(state)((k, v.permute(0, 3, 1, 2) if "planes." in k or "lines." in k else v) for k, v in state.items())
    old._metadata = {k: {**v, "version": 1} if all_modules or k.endswith("_grid") else v
                     for k, v in state._metadata.items()}
    return old


def test_state_dicts_and_moments_of_the_component_major_layout_load():
    torch.manual_seed(0)
    field = TensorVMField(AABB, n_voxels=16**3)
    optimizer = torch.optim.Adam(field.param_groups(0.02, 1e-3))
    xyz = box_points(200)
    (field.density(xyz).sum() + field.app_features(xyz).sum()).backward()
    optimizer.step()
    moments = optimizer.state_dict()
    old_moments = {**moments, "state": {i: {k: v.permute(0, 3, 1, 2) if v.dim() == 4 else v for k, v in s.items()}
                                        for i, s in moments["state"].items()}}
    fresh = TensorVMField(AABB, n_voxels=16**3)
    fresh.load_state_dict(component_major(field.state_dict()))
    assert all(p.is_contiguous() for p in fresh.parameters())
    assert torch.equal(fresh.density(xyz), field.density(xyz))
    assert torch.equal(fresh.app_features(xyz), field.app_features(xyz))
    fresh_optimizer = torch.optim.Adam(fresh.param_groups(0.02, 1e-3))
    fresh_optimizer.load_state_dict(old_moments)
    vertex_major_moments(fresh_optimizer, fresh)
    stepped = [(p, q) for p, q in zip(field.parameters(), fresh.parameters()) if p in optimizer.state]
    assert len(stepped) == 2 * 6 + 1                      # the factors and the basis (the colour MLP was not used)
    for p, q in stepped:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(fresh_optimizer.state[q][key], optimizer.state[p][key])


@pytest.mark.parametrize("metadata", [True, False])
def test_a_square_component_major_grid_loads_with_its_moments(metadata):
    # n = H = W: a plane has one shape in both layouts, so its moments cannot be told apart by shape.
    torch.manual_seed(0)
    grid = VMGrid((4, 4, 4), [4, 4, 4])
    optimizer = torch.optim.Adam(grid.parameters())
    xyz = box_points(100) / 1.7
    grid.factors(xyz).pow(2).sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    old_moments = {**saved, "state": {i: {k: v.permute(0, 3, 1, 2) if v.dim() == 4 else v for k, v in s.items()}
                                      for i, s in saved["state"].items()}}
    old = component_major(grid.state_dict(), all_modules=True)
    fresh = VMGrid((4, 4, 4), [4, 4, 4])
    fresh.load_state_dict(old if metadata else dict(old))
    fresh_optimizer = torch.optim.Adam(fresh.parameters())
    fresh_optimizer.load_state_dict(old_moments)
    vertex_major_moments(fresh_optimizer, fresh)
    # Without torch's metadata the lines tell: [1, n, L, 1] against [1, L, 1, n].
    assert fresh.loaded_component_major
    assert torch.equal(fresh.factors(xyz), grid.factors(xyz))
    for p, q in zip(grid.parameters(), fresh.parameters()):
        assert torch.equal(fresh_optimizer.state[q]["exp_avg"], optimizer.state[p]["exp_avg"])
