"""TensoRF vector-matrix (VM) field (Chen et al., ECCV 2022), as Laser's stage 1 uses it (LASER.md §2).

A 3-D feature grid is factorised into three (plane, line) pairs: plane over (x, y) with a line along z, plane
(x, z) with line y, plane (y, z) with line x. A point's feature is the product of its bilinearly sampled plane
value and linearly sampled line value, per component.

Factors are stored vertex-major, a vertex's components adjacent: a plane is ``[1, H, W, n]``, a line
``[1, L, 1, n]`` (TensoRF's ``[1, n, H, W]``, permuted). The CPU lookup reads such a factor as its row table as it
is; from TensoRF's layout, a strided table, the same lookup took 2.5-8x as long (experiments/RESULTS.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from laser.fields.base import RadianceField

# (plane axes, line axis) of the three factor pairs, axes as (x, y, z) = (0, 1, 2).
PLANE_AXES = ((0, 1), (0, 2), (1, 2))
LINE_AXES = (2, 1, 0)


def voxels_to_resolution(n_voxels: int, aabb: Tensor) -> list[int]:
    """Cells per axis for about ``n_voxels`` cubic cells filling ``aabb`` ``[2, 3]``."""
    size = aabb[1] - aabb[0]
    voxel = (size.prod() / n_voxels) ** (1 / 3)
    return [int(r) for r in (size / voxel).long().tolist()]


def log_spaced_voxels(n_init: int, n_final: int, n_steps: int) -> list[int]:
    """Voxel counts after each of ``n_steps`` upsamplings, log-spaced from ``n_init`` to ``n_final``."""
    counts = torch.exp(torch.linspace(math.log(n_init), math.log(n_final), n_steps + 1))
    return [int(round(c)) for c in counts.tolist()][1:]


class _PlaneTotalVariation(torch.autograd.Function):
    """``2 (mean dh^2 + mean dw^2)`` of a plane ``[1, H, W, n]``, its finite differences ``dh``, ``dw`` along H
    and W. The gradient is written into one buffer: autograd's chain (slices, powers, means) made and summed a
    full-plane tensor per op, twice the time of this one (stage 1 regularises every plane every step)."""

    @staticmethod
    def forward(ctx, plane: Tensor) -> Tensor:
        dh = plane[:, 1:] - plane[:, :-1]
        dw = plane[:, :, 1:] - plane[:, :, :-1]
        ctx.save_for_backward(dh, dw)
        return 2 * (dh.pow(2).mean() + dw.pow(2).mean())

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        dh, dw = ctx.saved_tensors
        out = dh.new_zeros(dh.shape[0], dh.shape[1] + 1, *dh.shape[2:])
        gh = dh * (4 * grad / dh.numel())                               # d(2 mean dh^2) / d dh
        out[:, 1:] += gh
        out[:, :-1] -= gh
        gw = dw * (4 * grad / dw.numel())
        out[:, :, 1:] += gw
        out[:, :, :-1] -= gw
        return out


def total_variation(planes: nn.ParameterList) -> Tensor:
    """Mean squared finite differences over each plane's two spatial axes (planes ``[1, H, W, n]``), doubled and
    summed over planes (TensoRF's ``TVLoss``)."""
    total = 0.0
    for plane in planes:
        total = total + _PlaneTotalVariation.apply(plane)
    return total


def sample_grid_sample(grid: Tensor, coords: Tensor) -> Tensor:
    """Reference lookup: a factor ``grid`` ``[1, H, W, C]`` at ``coords`` ``[P, 2]`` (x along W, y along H, in
    [-1, 1], corners aligned) -> ``[P, C]``. Lines are grids of width 1 sampled at x = 0."""
    return F.grid_sample(grid.permute(0, 3, 1, 2), coords.reshape(1, -1, 1, 2), align_corners=True)[0, :, :, 0].T


class _WeightedRowSum(torch.autograd.Function):
    """``out[p] = sum_k weight[p, k] * table[index[p, k]]``, differentiable in ``table`` only.

    The forward is ``embedding_bag``; the backward scatters each corner's weighted gradient with ``index_add_``,
    several times faster on CPU than ``embedding_bag``'s own backward (which sorts the indices first).
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(index, weight)
        ctx.rows = table.shape[0]
        return F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        index, weight = ctx.saved_tensors
        grad_table = grad.new_zeros(ctx.rows, grad.shape[1])
        for k in range(index.shape[1]):
            grad_table.index_add_(0, index[:, k], grad * weight[:, k : k + 1])
        return grad_table, None, None


def cell(coord: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Normalised coordinates ``[P]`` in [-1, 1] on an axis of ``size`` vertices (corners aligned) -> the lower
    vertex of each one's cell ``[P]`` (long) and the fraction ``[P]`` of the way to the next; the last cell is
    closed, so 1 reads the last vertex."""
    position = (coord + 1) / 2 * (size - 1)
    low = position.floor().clamp(0, max(size - 2, 0))
    return low.long(), position - low


def sample_embedding_bag(grid: Tensor, coords: Tensor) -> Tensor:
    """Same result as :func:`sample_grid_sample`, as a weighted sum of the 4 corner rows (2 for a line) of the
    factor's row table (a view of the contiguous factor). On CPU, training through it is several times faster than
    through grid_sample."""
    _, height, width, channels = grid.shape
    table = grid.reshape(-1, channels)
    y0, fy = cell(coords[:, 1], height)
    fy = fy[:, None]
    if width == 1:
        index = torch.stack([y0, (y0 + 1).clamp(max=height - 1)], dim=1)
        weight = torch.cat([1 - fy, fy], dim=1)
    else:
        x0, fx = cell(coords[:, 0], width)
        fx = fx[:, None]
        i00 = y0 * width + x0
        i10 = (i00 + width).clamp(max=height * width - 1)
        index = torch.stack([i00, i00 + 1, i10, i10 + 1], dim=1)
        weight = torch.cat([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=1)
    # Points outside [-1, 1] would read zeros with grid_sample; callers only sample inside the box.
    return _WeightedRowSum.apply(table, index, weight.detach())


def vertex_major(factor: Tensor) -> nn.Parameter:
    """A component-major factor ``[1, n, H, W]`` as the vertex-major parameter ``[1, H, W, n]`` (contiguous)."""
    return nn.Parameter(factor.permute(0, 2, 3, 1).contiguous())


def vertex_major_moments(optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
    """After loading an optimiser's state saved with a checkpoint whose :class:`VMGrid` factors were component-major
    (version 1), permute the moments of those factors to their vertex-major parameters. Which grids were loaded from
    that layout is what they recorded, not guessed from shapes (a plane with n = H = W looks the same either way)."""
    for grid in module.modules():
        if isinstance(grid, VMGrid) and grid.loaded_component_major:
            for p in [*grid.planes, *grid.lines]:
                state = optimizer.state.get(p, {})
                for key, value in state.items():
                    if torch.is_tensor(value) and value.dim() == 4:
                        state[key] = value.permute(0, 2, 3, 1).contiguous()


LOOKUPS = {"grid_sample": sample_grid_sample, "embedding_bag": sample_embedding_bag}


def sample_trilinear(table: Tensor, resolution: list[int], xyz: Tensor) -> Tensor:
    """A dense grid ``table`` ``[Z*Y*X, K]`` (channels last, x fastest; ``resolution`` is ``[X, Y, Z]``) at
    normalised positions ``xyz`` ``[P, 3]`` in [-1, 1], corners aligned -> ``[P, K]``: the weighted sum of the 8
    corner rows (``F.grid_sample``'s trilinear value, read row-wise as :func:`sample_embedding_bag` reads a plane).
    Sizes stay Python numbers: a tensor made from them would be a host-to-device copy, a wait, on a GPU."""
    lows, weights = [], []
    for axis, n in enumerate(resolution):
        low, fraction = cell(xyz[:, axis], n)
        lows.append(low)
        weights.append(torch.stack([1 - fraction, fraction], dim=1))                        # [P, 2]
    nx, ny = resolution[0], resolution[1]
    base = (lows[2] * ny + lows[1]) * nx + lows[0]
    index = torch.stack([base + dz * nx * ny + dy * nx + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)], 1)
    wx, wy, wz = weights
    weight = (wz[:, :, None, None] * wy[:, None, :, None] * wx[:, None, None, :]).reshape(-1, 8)
    return F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")


class VMGrid(nn.Module):
    """A VM-factorised feature volume: ``sum`` (density) or per-component features (appearance).

    ``lookup``: "grid_sample" (reference), "embedding_bag" (faster on CPU) or "auto" (embedding_bag on CPU).
    Factors are vertex-major (module docstring); state dicts of the component-major layout (version 1) load too.
    """

    _version = 2            # 2: factors [1, H, W, n] and [1, L, 1, n]; 1: [1, n, H, W] and [1, n, L, 1]

    def __init__(self, components: tuple[int, int, int], resolution: list[int], init_scale: float = 0.1,
                 lookup: str = "auto"):
        super().__init__()
        if lookup not in (*LOOKUPS, "auto"):
            raise ValueError(f"lookup must be one of {sorted(LOOKUPS)} or 'auto', not {lookup!r}")
        self.lookup = lookup
        self.loaded_component_major = False     # set by a load: :func:`vertex_major_moments` converts the moments
        self.components = tuple(components)
        self.planes = nn.ParameterList()
        self.lines = nn.ParameterList()
        for n, (a, b), c in zip(self.components, PLANE_AXES, LINE_AXES):
            # Drawn component-major, so the same seed gives the same field as before the layout changed.
            self.planes.append(vertex_major(init_scale * torch.randn(1, n, resolution[b], resolution[a])))
            self.lines.append(vertex_major(init_scale * torch.randn(1, n, resolution[c], 1)))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
        keys = [k for k in state_dict if k.startswith((f"{prefix}planes.", f"{prefix}lines."))]
        version = local_metadata.get("version")
        if version is None:         # a state dict rebuilt without torch's metadata: its lines' shapes tell
            own = dict(self.named_parameters(prefix=prefix.rstrip(".")))
            version = 1 if any(state_dict[k].shape != own[k].shape == state_dict[k].permute(0, 2, 3, 1).shape
                               for k in keys if k in own) else self._version
        self.loaded_component_major = version < 2
        if self.loaded_component_major:
            for key in keys:
                state_dict[key] = state_dict[key].permute(0, 2, 3, 1)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    def factors(self, xyz: Tensor) -> Tensor:
        """Normalised positions ``[P, 3]`` in [-1, 1] -> per-component plane*line products ``[P, sum(components)]``."""
        name = self.lookup if self.lookup != "auto" else ("grid_sample" if xyz.is_cuda else "embedding_bag")
        sample = LOOKUPS[name]
        out = []
        for plane, line, (a, b), c in zip(self.planes, self.lines, PLANE_AXES, LINE_AXES):
            line_xy = torch.stack([torch.zeros_like(xyz[:, c]), xyz[:, c]], dim=-1)
            out.append(sample(plane, xyz[:, [a, b]]) * sample(line, line_xy))
        return torch.cat(out, dim=1)

    def dense(self, mix: Tensor) -> Tensor:
        """The volume as a dense channels-last grid ``[Z*Y*X, K]`` of ``sum_n mix[k, n] plane_n line_n`` at every
        vertex, for a mix ``[K, sum(components)]`` (ones ``[1, C]``: the density's sum; a basis: its features).

        Bilinear-in-the-plane times linear-in-the-line is trilinear in the vertex products, so
        :func:`sample_trilinear` of this grid equals :meth:`factors` mixed by ``mix``, up to float rounding.
        """
        planes = [plane[0] for plane in self.planes]                        # [H, W, n] each
        lines = [line[0, :, 0].T for line in self.lines]                    # [n, L] each
        mixes = mix.split(list(self.components), dim=1)                     # [K, n] each
        k = mix.shape[0]
        z, y, x = planes[1].shape[0], planes[0].shape[0], planes[0].shape[1]
        # Each pair as one matmul of its plane [vertices, n] with (line * mix) [n, L K], summed in [Z, Y, X, K].
        def line_mix(i: int) -> Tensor:
            return (lines[i][:, :, None] * mixes[i].T[:, None, :]).reshape(len(lines[i]), -1)   # [n, L K]
        out = (planes[2] @ line_mix(2)).reshape(z, y, x, k)                             # (y, z | x)
        out += (planes[1] @ line_mix(1)).reshape(z, x, y, k).transpose(1, 2)            # (x, z | y)
        out += (planes[0] @ line_mix(0)).reshape(y, x, z, k).permute(2, 0, 1, 3)        # (x, y | z)
        return out.reshape(-1, k)

    @torch.no_grad()
    def resize(self, resolution: list[int]) -> None:
        """Resample every factor to a new resolution (bilinear, corners aligned, so the field is unchanged)."""
        def resample(factor: Tensor, size: tuple[int, int]) -> nn.Parameter:
            return vertex_major(F.interpolate(factor.permute(0, 3, 1, 2), size=size, mode="bilinear",
                                              align_corners=True))
        for i, ((a, b), c) in enumerate(zip(PLANE_AXES, LINE_AXES)):
            self.planes[i] = resample(self.planes[i].data, (resolution[b], resolution[a]))
            self.lines[i] = resample(self.lines[i].data, (resolution[c], 1))

    @torch.no_grad()
    def crop(self, lo: list[int], hi: list[int]) -> None:
        """Keep grid vertices ``lo[k] <= index < hi[k]`` on every axis k."""
        for i, ((a, b), c) in enumerate(zip(PLANE_AXES, LINE_AXES)):
            self.planes[i] = nn.Parameter(self.planes[i].data[:, lo[b]:hi[b], lo[a]:hi[a]].contiguous())
            self.lines[i] = nn.Parameter(self.lines[i].data[:, lo[c]:hi[c]].contiguous())

    def empty_like_shapes(self, resolution: list[int]) -> None:
        """Reshape parameters to ``resolution`` without keeping values (before loading a state dict)."""
        for i, ((a, b), c) in enumerate(zip(PLANE_AXES, LINE_AXES)):
            n = self.components[i]
            self.planes[i] = nn.Parameter(torch.zeros(1, resolution[b], resolution[a], n, device=self.planes[i].device))
            self.lines[i] = nn.Parameter(torch.zeros(1, resolution[c], 1, n, device=self.lines[i].device))


class ColorMLP(nn.Module):
    """TensoRF's ``MLPRender_Fea``: appearance features and view direction -> RGB (no positional encodings)."""

    def __init__(self, in_dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim + 3, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 3))
        nn.init.constant_(self.net[-1].bias, 0.0)

    def forward(self, features: Tensor, viewdirs: Tensor) -> Tensor:
        return torch.sigmoid(self.net(torch.cat([features, viewdirs], dim=-1)))


class TensorVMField(RadianceField):
    """TensoRF-VM with ReLU density (``fea2denseAct=relu``) and an MLP colour head.

    ``dense_when_frozen_mb``: while a grid is frozen (no gradient wanted: stage 2's density, its appearance before
    the joint phase, every evaluation), it is looked up as one dense trilinear grid (:meth:`VMGrid.dense`; the
    appearance with its basis folded in) instead of six factor lookups, when that grid takes at most this many MiB;
    rebuilt when a parameter behind it changes (see :meth:`_frozen_grid`). Same values up to float rounding; 0
    switches it off.
    """

    def __init__(self, aabb, n_voxels: int = 2097156, density_components=(16, 4, 4),
                 app_components=(48, 12, 12), app_dim: int = 27, color_hidden: int = 128,
                 init_scale: float = 0.1, lookup: str = "auto", dense_when_frozen_mb: float = 512):
        super().__init__(torch.as_tensor(aabb, dtype=torch.float32))
        self.resolution = voxels_to_resolution(n_voxels, self.aabb)
        self.density_grid = VMGrid(density_components, self.resolution, init_scale, lookup)
        self.app_grid = VMGrid(app_components, self.resolution, init_scale, lookup)
        self.basis = nn.Linear(sum(app_components), app_dim, bias=False)
        self.color_net = ColorMLP(app_dim, color_hidden)
        self.app_dim = app_dim
        self.dense_when_frozen_mb = dense_when_frozen_mb
        self._dense: dict[str, tuple[tuple, Tensor]] = {}   # name -> (what it was built from, [Z*Y*X, K] grid)
        self._frozen_blocks = 0

    def density(self, xyz: Tensor) -> Tensor:
        table = self._frozen_grid("density")
        if table is not None:
            return F.relu(sample_trilinear(table, self.resolution, self.normalize(xyz))[:, 0])
        return F.relu(self.density_grid.factors(self.normalize(xyz)).sum(-1))

    def app_features(self, xyz: Tensor) -> Tensor:
        table = self._frozen_grid("app")
        if table is not None:
            return sample_trilinear(table, self.resolution, self.normalize(xyz))
        return self.basis(self.app_grid.factors(self.normalize(xyz)))

    def _dense_source(self, name: str) -> tuple[VMGrid, list[Tensor], Tensor]:
        """The grid, the parameters and the mix ``[K, sum(components)]`` behind the dense grid ``name``
        ("density": the components' sum; "app": the appearance features, the basis folded in)."""
        if name == "app":
            return self.app_grid, [*self.app_grid.parameters(), self.basis.weight], self.basis.weight
        grid = self.density_grid
        return grid, list(grid.parameters()), self.aabb.new_ones(1, sum(grid.components))

    def _frozen_grid(self, name: str) -> Tensor | None:
        """The dense grid ``name`` (:meth:`_dense_source`) when nothing behind it can change (no parameter wants a
        gradient, or inside :meth:`frozen` with gradients off) and it fits ``dense_when_frozen_mb``; else None (look
        the factors up).

        A grid is rebuilt when a parameter behind it is replaced, changed in place through autograd-visible ops
        (a load, a ``no_grad`` edit), reshaped or has its ``requires_grad`` flipped. A grid of trained parameters
        lives only inside the :meth:`frozen` block, as a fused optimiser step does not bump a tensor's version;
        writes through ``.data`` are not seen either: call :meth:`frozen`'s block around a lookup after them."""
        grid, params, mix = self._dense_source(name)
        trained = any(p.requires_grad for p in params)
        size = math.prod(self.resolution) * mix.shape[0] * params[0].element_size()
        if ((trained and (not self._frozen_blocks or torch.is_grad_enabled()))
                or size > self.dense_when_frozen_mb * 2**20):
            self._dense.pop(name, None)
            return None
        key = tuple((id(p), p.data_ptr(), p._version, tuple(p.shape), p.requires_grad) for p in params)
        if name not in self._dense or self._dense[name][0] != key:
            self._dense.pop(name, None)                                   # free the stale grid before building
            with torch.no_grad():
                # Building holds about twice the grid for a moment (the sum and one pair's product).
                self._dense[name] = (key, grid.dense(mix))
        return self._dense[name][1]

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """A block in which no parameter changes (an evaluation): with gradients off, every grid is looked up
        densely; the grids of trained parameters are dropped at both ends of the outermost block."""
        if not self._frozen_blocks:
            self._drop_trained()
        self._frozen_blocks += 1
        try:
            yield
        finally:
            self._frozen_blocks -= 1
            if not self._frozen_blocks:
                self._drop_trained()

    def _drop_trained(self) -> None:
        """Drop the grids whose parameters are trained now (whatever they were when the grid was built)."""
        for name in [n for n in self._dense if any(p.requires_grad for p in self._dense_source(n)[1])]:
            del self._dense[name]

    def color(self, features: Tensor, viewdirs: Tensor) -> Tensor:
        return self.color_net(features, viewdirs)

    def param_groups(self, lr_grid: float, lr_network: float) -> list[dict]:
        return [
            {"params": [*self.density_grid.parameters(), *self.app_grid.parameters()], "lr": lr_grid},
            {"params": [*self.basis.parameters(), *self.color_net.parameters()], "lr": lr_network},
        ]

    def appearance_param_groups(self, lr_grid: float, lr_network: float) -> list[dict]:
        return [{"params": list(self.app_grid.parameters()), "lr": lr_grid},
                {"params": [*self.basis.parameters(), *self.color_net.parameters()], "lr": lr_network}]

    def regularization(self) -> dict[str, Tensor]:
        return {"tv_density": total_variation(self.density_grid.planes),
                "tv_app": total_variation(self.app_grid.planes)}

    def grid_resolution(self) -> list[int]:
        return list(self.resolution)

    def set_resolution(self, n_voxels: int) -> bool:
        self.resolution = voxels_to_resolution(n_voxels, self.aabb)
        self.density_grid.resize(self.resolution)
        self.app_grid.resize(self.resolution)
        return True

    @torch.no_grad()
    def shrink(self, new_aabb: Tensor) -> None:
        res = torch.tensor(self.resolution, device=self.aabb.device)
        units = (self.aabb[1] - self.aabb[0]) / (res - 1)
        # floor / ceil (TensoRF rounds the lower corner), so the kept grid always covers the requested box.
        lo = torch.floor((new_aabb[0] - self.aabb[0]) / units).long().clamp(min=0)
        hi = torch.minimum(torch.ceil((new_aabb[1] - self.aabb[0]) / units).long() + 1, res)
        self.density_grid.crop(lo.tolist(), hi.tolist())
        self.app_grid.crop(lo.tolist(), hi.tolist())
        # The new box passes exactly through the kept vertices, so the cropped grid samples the same field.
        self.aabb.copy_(torch.stack([self.aabb[0] + lo * units, self.aabb[0] + (hi - 1) * units]))
        self.resolution = (hi - lo).tolist()

    def state_dict_meta(self) -> dict:
        return {**super().state_dict_meta(), "resolution": list(self.resolution)}

    def prepare_for_load(self, meta: dict) -> None:
        super().prepare_for_load(meta)
        self.aabb.copy_(torch.tensor(meta["aabb"]))
        self.resolution = list(meta["resolution"])
        self.density_grid.empty_like_shapes(self.resolution)
        self.app_grid.empty_like_shapes(self.resolution)
