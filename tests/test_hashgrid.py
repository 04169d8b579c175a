"""Hash-grid encoding and field: the vectorised encoding against a per-point loop, gradients, SH constants, the
field's interface contract, and that it can fit a simple target."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from laser.fields.hashgrid import (HASH_PRIMES, HashEncoding, HashGridField, level_resolutions, resolve_backend,
                                   spherical_harmonics, tcnn, trunc_exp)

HAS_TCNN_CUDA = tcnn is not None and torch.cuda.is_available()

# 4 levels of 2, 4, 8, 16 cells (3, 5, 9, 17 vertices per axis) with a 512-entry table: levels 0-1 are dense
# (27 and 125 vertices), levels 2-3 hashed (729 and 4913 vertices).
SMALL = dict(n_levels=4, features_per_level=2, log2_hashmap_size=9, base_resolution=2, max_resolution=16)
FIELD = dict(n_levels=4, features_per_level=2, log2_hashmap_size=10, base_resolution=4, max_resolution=32,
             geo_feat_dim=7, hidden_dim=32, hidden_dim_color=32, backend="torch", alpha_grid_resolution=16)
BOX = [[-1.0, -2.0, -0.5], [1.0, 2.0, 1.5]]


def naive_encode(x: torch.Tensor, levels: list[dict], table_size: int) -> torch.Tensor:
    """The hash encoding written point by point and corner by corner, straight from its definition.

    ``levels``: per level ``scale`` (positions ``x * scale + offset`` in grid units), ``offset``, ``vertices`` per
    axis and ``table`` ``[rows, F]``. A level is dense when ``vertices**3 <= table_size``. Returns ``[P, L * F]``.
    """
    rows = []
    for point in x:
        feats = []
        for level in levels:
            pos = [point[d] * level["scale"] + level["offset"] for d in range(3)]
            cell = [math.floor(p.item()) for p in pos]
            frac = [pos[d] - cell[d] for d in range(3)]
            v, table = level["vertices"], level["table"]
            acc = torch.zeros_like(table[0])
            for bz in (0, 1):
                for by in (0, 1):
                    for bx in (0, 1):
                        cx, cy, cz = cell[0] + bx, cell[1] + by, cell[2] + bz
                        if v**3 <= table_size:
                            index = cx + cy * v + cz * v * v
                        else:
                            index = (cx * HASH_PRIMES[0]) ^ (cy * HASH_PRIMES[1]) ^ (cz * HASH_PRIMES[2])
                        w = ((frac[0] if bx else 1 - frac[0]) * (frac[1] if by else 1 - frac[1])
                             * (frac[2] if bz else 1 - frac[2]))
                        acc = acc + w * table[index % table.shape[0]]
            feats.append(acc)
        rows.append(torch.cat(feats))
    return torch.stack(rows)


def torch_levels(enc: HashEncoding) -> list[dict]:
    """The torch backend's convention: ``res`` cells, vertices on ``v / res``, one table slice per level."""
    tables = torch.split(enc.params, [min((r + 1) ** 3, 2**enc.log2_hashmap_size) for r in enc.resolutions])
    return [dict(scale=r, offset=0.0, vertices=r + 1, table=t) for r, t in zip(enc.resolutions, tables)]


def small_encoding(**overrides) -> HashEncoding:
    torch.manual_seed(0)
    enc = HashEncoding(**{**SMALL, "backend": "torch", **overrides}).double()
    with torch.no_grad():
        enc.params.uniform_(-1, 1)  # the default +-1e-4 init would make every comparison trivially close
    return enc


def test_resolutions_and_layout():
    assert level_resolutions(16, 16, 2048)[0] == 16 and level_resolutions(16, 16, 2048)[-1] == 2048
    assert level_resolutions(4, 2, 16) == [2, 4, 8, 16]
    enc = HashEncoding(**SMALL, backend="torch")
    assert enc.n_dense == 2
    assert enc.params.shape == (27 + 125 + 512 + 512, 2)
    assert enc.params.abs().max() <= 1e-4


def test_output_shape_and_dtype():
    enc = HashEncoding(**SMALL, backend="torch")
    out = enc(torch.rand(37, 3))
    assert out.shape == (37, 8) and out.dtype == torch.float32


def test_matches_naive_values_and_gradients():
    enc = small_encoding()
    x = torch.rand(40, 3, dtype=torch.float64)
    g = torch.randn(40, enc.n_output_dims, dtype=torch.float64)

    x_fast = x.clone().requires_grad_()
    fast = enc(x_fast)
    (fast * g).sum().backward()
    grad_params_fast, enc.params.grad = enc.params.grad.clone(), None

    x_slow = x.clone().requires_grad_()
    slow = naive_encode(x_slow, torch_levels(enc), 2**enc.log2_hashmap_size)
    (slow * g).sum().backward()

    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(grad_params_fast, enc.params.grad)
    torch.testing.assert_close(x_fast.grad, x_slow.grad)


def test_gradcheck():
    enc = small_encoding(n_levels=3, log2_hashmap_size=6, max_resolution=8)  # 27 dense, then two hashed levels
    x = torch.rand(6, 3, dtype=torch.float64, requires_grad=True)
    params = enc.params.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, p: functional_call(enc, {"params": p}, (x,)), (x, params))


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_exact_at_vertices(level: int):
    enc = small_encoding()
    res = enc.resolutions[level]
    vertices = torch.tensor([[0, 0, 0], [1, 2, 0], [res, res, res], [res - 1, 0, res], [res // 2, 1, res - 1]])
    out = enc(vertices.double() / res).view(len(vertices), enc.n_levels, -1)[:, level]
    expected = naive_encode(vertices.double() / res, torch_levels(enc), 2**enc.log2_hashmap_size)
    torch.testing.assert_close(out, expected.view(len(vertices), enc.n_levels, -1)[:, level])
    # A vertex's value is its own table row: no blending with neighbours.
    v = res + 1
    table = torch_levels(enc)[level]["table"]
    for point, feat in zip(vertices.tolist(), out):
        x, y, z = point
        if v**3 <= 2**enc.log2_hashmap_size:
            index = x + y * v + z * v * v
        else:
            index = ((x * HASH_PRIMES[0]) ^ (y * HASH_PRIMES[1]) ^ (z * HASH_PRIMES[2])) % table.shape[0]
        torch.testing.assert_close(feat, table[index])


def test_inputs_outside_unit_cube_are_clamped():
    enc = small_encoding()
    x = torch.tensor([[-0.5, 0.3, 1.7]], dtype=torch.float64)
    torch.testing.assert_close(enc(x), enc(torch.tensor([[0.0, 0.3, 1.0]], dtype=torch.float64)))


def test_backend_resolution():
    expected = "tcnn" if HAS_TCNN_CUDA else "torch"
    assert resolve_backend("auto") == expected
    assert HashEncoding(**SMALL, backend="auto").backend == expected
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cuda")


@pytest.mark.skipif(tcnn is not None, reason="tinycudann is installed")
def test_tcnn_requested_without_tinycudann_is_a_clear_error():
    with pytest.raises(ImportError, match="tinycudann"):
        HashEncoding(**SMALL, backend="tcnn")


def tcnn_levels(enc: HashEncoding, base_resolution: int, per_level_scale: float) -> list[dict]:
    """tiny-cuda-nn's convention (encodings/grid.h): ``scale = base * b**l - 1``, ``ceil(scale) + 1`` vertices per
    axis shifted by half a cell, level sizes rounded up to multiples of 8, features innermost in one flat vector."""
    table_size = 2**enc.log2_hashmap_size
    flat = enc.tcnn_encoding.params.detach().double().view(-1, enc.features_per_level)
    levels, start = [], 0
    for level in range(enc.n_levels):
        scale = float(torch.tensor(2.0) ** (level * math.log2(per_level_scale)) * base_resolution - 1)
        vertices = math.ceil(scale) + 1
        rows = min(-(-vertices**3 // 8) * 8, table_size)
        levels.append(dict(scale=scale, offset=0.5, vertices=vertices, table=flat[start:start + rows]))
        start += rows
    assert start == flat.shape[0]
    return levels


@pytest.mark.skipif(not HAS_TCNN_CUDA, reason="needs tinycudann and a CUDA device")
def test_tcnn_backend_matches_its_definition():
    # per_level_scale 2 keeps tiny-cuda-nn's float32 level scales exact, so both sides pick the same cells.
    config = dict(n_levels=4, features_per_level=2, log2_hashmap_size=9, base_resolution=4, max_resolution=32)
    enc = HashEncoding(**config, backend="tcnn").cuda()
    torch_enc = HashEncoding(**config, backend="torch")
    with torch.no_grad():
        enc.tcnn_encoding.params.uniform_(-1, 1)
    x = torch.rand(64, 3, device="cuda") * 0.98 + 0.01
    out = enc(x)
    assert out.shape == torch_enc(x.cpu()).shape and out.dtype == torch.float32
    expected = naive_encode(x.double().cpu(), tcnn_levels(enc, 4, 2.0), 2**9)
    # tiny-cuda-nn may keep the table in half precision.
    torch.testing.assert_close(out.double().cpu(), expected, atol=1e-2, rtol=1e-2)
    out.sum().backward()
    assert enc.tcnn_encoding.params.grad.abs().sum() > 0


def test_spherical_harmonics_known_values():
    axes = torch.eye(3)
    sh = spherical_harmonics(axes, degree=4)
    assert sh.shape == (3, 16)
    torch.testing.assert_close(sh[:, 0], torch.full((3,), 0.28209479))
    c1 = 0.48860251
    # Band 1 is (-c y, c z, -c x).
    torch.testing.assert_close(sh[:, 1:4], torch.tensor([[0, 0, -c1], [-c1, 0, 0], [0, c1, 0]]))
    assert spherical_harmonics(axes, degree=1).shape == (3, 1)
    with pytest.raises(ValueError):
        spherical_harmonics(axes, degree=5)


def test_spherical_harmonics_orthonormal():
    # Fibonacci-sphere quadrature: the mean of Y_i Y_j over the sphere is delta_ij / (4 pi).
    n = 20000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (3 - math.sqrt(5)) * i
    r = (1 - z * z).sqrt()
    dirs = torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1)
    sh = spherical_harmonics(dirs, degree=4)
    gram = 4 * math.pi * sh.T @ sh / n
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=1e-3, rtol=0)


def test_trunc_exp_clamps_gradient_only():
    x = torch.tensor([0.0, 20.0], requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x.detach()))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, math.exp(15)]))


def make_field() -> HashGridField:
    torch.manual_seed(0)
    return HashGridField(BOX, **FIELD)


def test_field_density_colour_and_gradients():
    field = make_field()
    box = torch.tensor(BOX)
    inside = box[0] + torch.rand(200, 3) * (box[1] - box[0])
    outside = inside + torch.tensor([3.0, 0.0, 0.0])
    sigma = field.density(torch.cat([inside, outside]))
    assert sigma.shape == (400,)
    assert (sigma[:200] > 0).all() and (sigma[200:] == 0).all()

    features = field.app_features(inside)
    assert features.shape == (200, field.app_dim) and field.app_dim == 7
    dirs = torch.nn.functional.normalize(torch.randn(200, 3), dim=-1)
    rgb = field.color(features, dirs)
    assert rgb.shape == (200, 3) and (rgb >= 0).all() and (rgb <= 1).all()

    (sigma.sum() + rgb.sum()).backward()
    for name, p in field.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_field_interface():
    field = make_field()
    groups = field.param_groups(lr_grid=1e-2, lr_network=1e-3)
    assert [g["lr"] for g in groups] == [1e-2, 1e-3]
    assert groups[0]["params"] == [field.encoding.params]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in field.parameters())
    assert field.grid_resolution() == [16, 16, 16]
    assert field.regularization() == {}


def test_shrink_keeps_the_encoding_frame():
    field = make_field()
    points = torch.tensor([[0.1, 0.2, 0.3], [0.9, 1.9, 1.4]])
    before = field.density(points)
    field.shrink(torch.tensor([[-0.5, -0.5, 0.0], [0.5, 0.5, 0.5]]))
    after = field.density(points)
    torch.testing.assert_close(after[0], before[0])
    assert after[1] == 0


def test_checkpoint_round_trip():
    field = make_field()
    field.update_alpha_mask(step_size=0.01, threshold=1e-4)
    field.shrink(torch.tensor([[-0.5, -0.5, 0.0], [0.5, 0.5, 0.5]]))
    meta, state = field.state_dict_meta(), field.state_dict()
    assert meta["encoding_backend"] == "torch"

    torch.manual_seed(1)
    loaded = HashGridField(BOX, **FIELD)
    loaded.prepare_for_load(meta)
    loaded.load_state_dict(state)
    xyz = torch.rand(50, 3) - 0.5
    torch.testing.assert_close(loaded.density(xyz), field.density(xyz))
    torch.testing.assert_close(loaded.app_features(xyz), field.app_features(xyz))
    assert torch.equal(loaded.occupied(xyz), field.occupied(xyz))

    with pytest.raises(ValueError, match="backend"):
        loaded.prepare_for_load({**meta, "encoding_backend": "tcnn"})


def test_field_can_learn():
    """100 Adam steps fit a blob of density with a position-dependent colour."""
    field = make_field()
    optim = torch.optim.Adam(field.param_groups(lr_grid=3e-2, lr_network=1e-2))
    box = torch.tensor(BOX)
    generator = torch.Generator().manual_seed(0)

    def loss_fn() -> torch.Tensor:
        xyz = box[0] + torch.rand(512, 3, generator=generator) * (box[1] - box[0])
        dirs = torch.nn.functional.normalize(torch.randn(512, 3, generator=generator), dim=-1)
        target_sigma = 5 * torch.exp(-(xyz**2).sum(-1) / 0.3)
        target_rgb = (xyz - box[0]) / (box[1] - box[0])
        rgb = field.color(field.app_features(xyz), dirs)
        return (field.density(xyz) - target_sigma).pow(2).mean() + (rgb - target_rgb).pow(2).mean()

    with torch.no_grad():
        initial = loss_fn().item()
    for _ in range(100):
        optim.zero_grad()
        loss = loss_fn()
        loss.backward()
        optim.step()
    with torch.no_grad():
        final = loss_fn().item()
    assert final < 0.1 * initial, (initial, final)
