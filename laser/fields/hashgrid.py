"""Multi-resolution hash-grid field (Instant-NGP, Müller et al., SIGGRAPH 2022) behind the ``RadianceField`` interface.

A point in [0, 1]^3 is looked up in ``L`` grids whose resolutions grow geometrically from ``base_resolution`` to
``max_resolution``. Each level stores ``F`` features per grid vertex; coarse levels are stored densely, fine levels
whose vertices outnumber the table share it through a spatial hash (collisions are left to the MLP to resolve).
The 8 surrounding vertices are blended trilinearly and the ``L * F`` features are concatenated.

Two backends compute the encoding: ``torch`` (pure PyTorch, runs anywhere, the reference) and ``tcnn``
(tiny-cuda-nn's fused CUDA kernel). They share hyperparameters but are *not* the same function: tiny-cuda-nn counts
a level's resolution in vertices (``scale = base * b**l - 1``) and offsets its vertices by half a cell, and it
stores its parameters in one flat vector. Weights therefore do not carry over between backends; the field records
which backend wrote a checkpoint and refuses to load it into the other.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from laser.fields.base import RadianceField

try:
    import tinycudann as tcnn
except (ImportError, OSError):  # tinycudann raises OSError (EnvironmentError) at import when CUDA is missing
    tcnn = None

Backend = Literal["auto", "torch", "tcnn"]

# Instant-NGP's per-axis hash primes. Multiplying x by 1 keeps neighbouring x cells in neighbouring slots (cache).
HASH_PRIMES = (1, 2654435761, 805459861)


def resolve_backend(backend: Backend) -> str:
    """``"auto"`` -> ``"tcnn"`` when tinycudann imports and CUDA is available, else ``"torch"``."""
    if backend == "auto":
        return "tcnn" if tcnn is not None and torch.cuda.is_available() else "torch"
    if backend == "tcnn" and tcnn is None:
        raise ImportError("HashEncoding(backend='tcnn') needs tinycudann with a CUDA device; it is not importable "
                          "here. Use backend='torch' (or 'auto'), or install tiny-cuda-nn's PyTorch bindings.")
    if backend not in ("torch", "tcnn"):
        raise ValueError(f"unknown hash-encoding backend {backend!r}; expected 'auto', 'torch' or 'tcnn'")
    return backend


def level_resolutions(n_levels: int, base_resolution: int, max_resolution: int) -> list[int]:
    """Cells per axis of each level: ``floor(base * b**l)`` with ``b = (max / base) ** (1 / (L - 1))``."""
    if n_levels == 1:
        return [base_resolution]
    growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (n_levels - 1))
    # The epsilon keeps exact products from flooring one cell short (2 * 2**(2/2) comes out as 3.9999999999999996).
    return [math.floor(base_resolution * growth**level + 1e-9) for level in range(n_levels)]


class HashEncoding(nn.Module):
    """Positions ``[P, 3]`` in [0, 1] -> features ``[P, n_levels * features_per_level]`` (level-major).

    Torch backend layout: level ``l`` has ``res_l`` cells and ``res_l + 1`` vertices per axis, vertex ``v`` sitting at
    ``v / res_l``. It is dense (vertex index ``x + y * V + z * V**2``, ``V = res_l + 1``) when ``V**3`` fits in
    ``2**log2_hashmap_size`` entries, hashed (``(x * p0) ^ (y * p1) ^ (z * p2) mod table size``) otherwise. All levels
    live in one parameter ``params`` ``[sum of level sizes, features_per_level]``; ``level_offsets[l]`` is where level
    ``l`` starts, and dense levels take only the ``V**3`` rows they need. Inputs outside [0, 1] are clamped.

    Torch backend memory: the largest intermediates are ``[P, L, 8]`` (corner indices, weights) and ``[P, L, 8, F]``
    (gathered features), so P = 2**18 points with the defaults peak at about 1.6 GB of process memory (CPU).
    """

    def __init__(self, n_levels: int = 16, features_per_level: int = 2, log2_hashmap_size: int = 19,
                 base_resolution: int = 16, max_resolution: int = 2048, backend: Backend = "auto"):
        super().__init__()
        self.n_levels = n_levels
        self.features_per_level = features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.n_output_dims = n_levels * features_per_level
        self.resolutions = level_resolutions(n_levels, base_resolution, max_resolution)
        self.backend = resolve_backend(backend)

        if self.backend == "tcnn":
            per_level_scale = (max_resolution / base_resolution) ** (1 / (n_levels - 1)) if n_levels > 1 else 1.0
            self.tcnn_encoding = tcnn.Encoding(3, {
                "otype": "HashGrid",
                "n_levels": n_levels,
                "n_features_per_level": features_per_level,
                "log2_hashmap_size": log2_hashmap_size,
                "base_resolution": base_resolution,
                "per_level_scale": per_level_scale,
            })
            return

        table_size = 2**log2_hashmap_size
        vertices = [r + 1 for r in self.resolutions]
        sizes = [min(v**3, table_size) for v in vertices]
        # Resolutions increase with the level, so the dense levels are a prefix; forward() handles the two groups
        # separately, each vectorised over its levels.
        self.n_dense = sum(v**3 <= table_size for v in vertices)
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        self.params = nn.Parameter(torch.empty(offsets[-1], features_per_level).uniform_(-1e-4, 1e-4))
        # Derived from the config, so kept out of the state dict (non-persistent).
        self.register_buffer("level_offsets", torch.tensor(offsets[:-1]), persistent=False)      # [L]
        self.register_buffer("level_vertices", torch.tensor(vertices), persistent=False)         # [L]
        self.register_buffer("level_scales", torch.tensor(self.resolutions, dtype=torch.float32),
                             persistent=False)                                                   # [L]
        self.register_buffer("hash_primes", torch.tensor(HASH_PRIMES), persistent=False)          # [3]

    def forward(self, x: Tensor) -> Tensor:
        """``[P, 3]`` in [0, 1] -> ``[P, n_levels * features_per_level]``, float32 (tcnn) or the params' dtype."""
        if self.backend == "tcnn":
            return self.tcnn_encoding(x.clamp(0, 1)).float()
        return self._forward_torch(x)

    def _forward_torch(self, x: Tensor) -> Tensor:
        x = x.clamp(0, 1).to(self.params.dtype)
        pos = x[:, None, :] * self.level_scales.to(x.dtype)[None, :, None]                # [P, L, 3]
        cell = pos.detach().floor().long()
        # x == 1 falls in the last cell with fraction 1 rather than in a cell past the grid.
        cell = torch.minimum(cell, (self.level_vertices - 2)[None, :, None])
        frac = pos - cell                                                                  # [P, L, 3]; carries d/dx

        # Corner c = (bx, by, bz) with c = bx + 2 * by + 4 * bz. Both indexing schemes are separable per axis
        # (dense: a sum of per-axis terms, hash: an XOR of them), so each axis contributes a [P, L, 2] term and the
        # [P, L, 8] index is formed by broadcasting, never building [P, L, 8, 3] coordinates.
        corners = cell[..., None] + torch.arange(2, device=x.device)                      # [P, L, 3, 2]
        d = self.n_dense
        index = torch.cat([self._dense_index(corners[:, :d], self.level_vertices[:d]),
                           self._hash_index(corners[:, d:])], dim=1)                       # [P, L, 8]
        index = index + self.level_offsets[None, :, None]

        weights = torch.stack([1 - frac, frac], dim=-1)                                     # [P, L, 3, 2]
        w = (weights[:, :, 0, None, None, :] * weights[:, :, 1, None, :, None]
             * weights[:, :, 2, :, None, None]).flatten(2)                                  # [P, L, 8]
        # index_select's backward is a plain index_add, several times faster on CPU than embedding's (which sorts).
        feats = self.params.index_select(0, index.flatten()).view(*index.shape, self.params.shape[-1])  # [P, L, 8, F]
        out = torch.einsum("plc,plcf->plf", w, feats)                                      # [P, L, F]
        return out.reshape(x.shape[0], self.n_output_dims)

    @staticmethod
    def _dense_index(corners: Tensor, vertices: Tensor) -> Tensor:
        """Corner coordinates ``[P, L, 3, 2]``, vertices per axis ``[L]`` -> row-major indices ``[P, L, 8]``."""
        v = vertices[None, :, None, None, None]
        return (corners[:, :, 0, None, None, :] + corners[:, :, 1, None, :, None] * v
                + corners[:, :, 2, :, None, None] * (v * v)).flatten(2)

    def _hash_index(self, corners: Tensor) -> Tensor:
        """Corner coordinates ``[P, L, 3, 2]`` -> hashed indices ``[P, L, 8]`` in ``[0, 2**log2_hashmap_size)``."""
        # coordinate * prime fits in int64 for any coordinate below 2**31; taking the low bits afterwards equals
        # tiny-cuda-nn's wrapping uint32 arithmetic because the table size is a power of two.
        h = corners * self.hash_primes[None, None, :, None]
        index = h[:, :, 0, None, None, :] ^ h[:, :, 1, None, :, None] ^ h[:, :, 2, :, None, None]
        return (index & (2**self.log2_hashmap_size - 1)).flatten(2)


class _TruncExp(torch.autograd.Function):
    """``exp`` whose backward clamps the exponent, so one large pre-activation cannot blow up the gradient."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(-15, 15))


def trunc_exp(x: Tensor) -> Tensor:
    """Density activation of Instant-NGP / nerfacto: ``exp`` forward, gradient with the exponent clamped to 15."""
    return _TruncExp.apply(x)


def spherical_harmonics(dirs: Tensor, degree: int = 4) -> Tensor:
    """Real spherical harmonics of unit directions ``[P, 3]`` -> ``[P, degree**2]`` (bands ``0 .. degree - 1``).

    ``degree`` counts bands as tiny-cuda-nn's ``SphericalHarmonics`` encoding does (4 -> 16 coefficients). Constants
    are the orthonormal real SH with the Condon-Shortley phase, in the usual ``m = -l .. l`` order.
    """
    if not 1 <= degree <= 4:
        raise ValueError(f"spherical_harmonics supports degree 1..4 (1..16 coefficients), got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z, 0.94617469575755997 * zz - 0.31539156525251999,
                -1.0925484305920792 * x * z, 0.54627421529603959 * (xx - yy)]
    if degree > 3:
        out += [0.59004358992664352 * y * (yy - 3 * xx), 2.8906114426405538 * x * y * z,
                0.45704579946446572 * y * (1 - 5 * zz), 0.3731763325901154 * z * (5 * zz - 3),
                0.45704579946446572 * x * (1 - 5 * zz), 1.4453057213202769 * z * (xx - yy),
                0.59004358992664352 * x * (3 * yy - xx)]
    return torch.stack(out, dim=-1)


def mlp(in_dim: int, hidden_dim: int, out_dim: int, n_hidden: int) -> nn.Sequential:
    """``n_hidden`` ReLU layers of width ``hidden_dim``, then a linear output layer."""
    layers: list[nn.Module] = []
    for i in range(n_hidden):
        layers += [nn.Linear(in_dim if i == 0 else hidden_dim, hidden_dim), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)


class HashGridField(RadianceField):
    """Instant-NGP-style field: hash encoding -> density MLP (density + geometric features) -> SH colour MLP.

    The encoding maps positions over ``grid_aabb`` (the box given at construction), which never changes: hash-table
    entries cannot be cropped or resampled like TensoRF's factors. :meth:`shrink` therefore only tightens ``aabb``
    (where rays are marched and density is non-zero), not the encoding's frame.
    """

    def __init__(self, aabb, n_levels: int = 16, features_per_level: int = 2, log2_hashmap_size: int = 19,
                 base_resolution: int = 16, max_resolution: int = 2048, geo_feat_dim: int = 15, hidden_dim: int = 64,
                 hidden_dim_color: int = 64, sh_degree: int = 4, backend: Backend = "auto",
                 alpha_grid_resolution: int = 128):
        super().__init__(torch.as_tensor(aabb, dtype=torch.float32))
        self.register_buffer("grid_aabb", self.aabb.clone())
        self.encoding = HashEncoding(n_levels, features_per_level, log2_hashmap_size, base_resolution,
                                     max_resolution, backend)
        # Sizes follow nerfacto: one hidden layer for density, two for colour.
        self.density_net = mlp(self.encoding.n_output_dims, hidden_dim, 1 + geo_feat_dim, n_hidden=1)
        self.color_net = mlp(sh_degree**2 + geo_feat_dim, hidden_dim_color, 3, n_hidden=2)
        self.sh_degree = sh_degree
        self.app_dim = geo_feat_dim
        self.alpha_grid_resolution = alpha_grid_resolution

    def _density_and_features(self, xyz: Tensor) -> tuple[Tensor, Tensor]:
        """``[P, 3]`` -> density ``[P]`` (0 outside ``aabb``) and geometric features ``[P, geo_feat_dim]``."""
        unit = (self.normalize(xyz, self.grid_aabb) + 1) / 2
        h = self.density_net(self.encoding(unit))
        inside = ((xyz >= self.aabb[0]) & (xyz <= self.aabb[1])).all(-1)
        sigma = torch.where(inside, trunc_exp(h[:, 0]), torch.zeros_like(h[:, 0]))
        return sigma, h[:, 1:]

    def density(self, xyz: Tensor) -> Tensor:
        return self._density_and_features(xyz)[0]

    def app_features(self, xyz: Tensor) -> Tensor:
        return self._density_and_features(xyz)[1]

    def color(self, features: Tensor, viewdirs: Tensor) -> Tensor:
        sh = spherical_harmonics(viewdirs, self.sh_degree).to(features.dtype)
        return torch.sigmoid(self.color_net(torch.cat([sh, features], dim=-1)))

    def param_groups(self, lr_grid: float, lr_network: float) -> list[dict]:
        return [
            {"params": list(self.encoding.parameters()), "lr": lr_grid},
            {"params": [*self.density_net.parameters(), *self.color_net.parameters()], "lr": lr_network},
        ]

    def grid_resolution(self) -> list[int]:
        return [self.alpha_grid_resolution] * 3

    def state_dict_meta(self) -> dict:
        return {**super().state_dict_meta(), "encoding_backend": self.encoding.backend}

    def prepare_for_load(self, meta: dict) -> None:
        super().prepare_for_load(meta)
        saved = meta.get("encoding_backend", self.encoding.backend)
        if saved != self.encoding.backend:
            raise ValueError(f"checkpoint's hash encoding was trained with backend {saved!r} but this field uses "
                             f"{self.encoding.backend!r}; the two store different parameters. Set "
                             f"field.backend={saved} to load it.")
