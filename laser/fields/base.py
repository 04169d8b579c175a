"""The interface every radiance field implements, and what all of them share (occupancy / alpha mask)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RadianceField(nn.Module):
    """Density and view-dependent colour over an axis-aligned box.

    Subclasses implement :meth:`density`, :meth:`app_features`, :meth:`color` and :meth:`param_groups`; the
    rendering code (``laser.rendering``) only calls these and :meth:`occupied`. Positions are in the space rays
    live in (NDC for forward-facing scenes).

    ``app_features`` is a separate step from ``color`` because stage 2 (Laser's semantic head) reads the same
    per-point appearance features.
    """

    app_dim: int

    def __init__(self, aabb: Tensor):
        super().__init__()
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).clone())
        # Occupancy from the alpha mask: [D, H, W] bool over ``alpha_aabb`` (z, y, x order for grid_sample).
        self.register_buffer("alpha_grid", torch.zeros(0, 0, 0, dtype=torch.bool))
        self.register_buffer("alpha_aabb", self.aabb.clone())

    # --- per-point queries -------------------------------------------------------------------------------------
    def density(self, xyz: Tensor) -> Tensor:
        """``[P, 3]`` -> ``[P]`` non-negative volume density."""
        raise NotImplementedError

    def app_features(self, xyz: Tensor) -> Tensor:
        """``[P, 3]`` -> ``[P, app_dim]`` appearance features."""
        raise NotImplementedError

    def color(self, features: Tensor, viewdirs: Tensor) -> Tensor:
        """Appearance features ``[P, app_dim]`` and unit view directions ``[P, 3]`` -> RGB ``[P, 3]`` in [0, 1]."""
        raise NotImplementedError

    def param_groups(self, lr_grid: float, lr_network: float) -> list[dict]:
        """Optimiser parameter groups; grids and networks learn at different rates."""
        raise NotImplementedError

    def appearance_param_groups(self, lr_grid: float, lr_network: float) -> list[dict]:
        """The parameters behind :meth:`app_features` and :meth:`color` only (density excluded): what stage 2
        fine-tunes jointly with the semantics while density stays frozen."""
        raise NotImplementedError(f"{type(self).__name__} does not separate appearance from density parameters")

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """A block in which no parameter changes (an evaluation), so a field may look itself up through caches
        built for it (:class:`~laser.fields.tensorf.TensorVMField`'s dense grids); here nothing."""
        yield

    def regularization(self) -> dict[str, Tensor]:
        """Named unweighted regularisers (e.g. total variation); empty when the field has none."""
        return {}

    # --- schedule hooks (no-ops unless a field needs them) -------------------------------------------------------
    def set_resolution(self, n_voxels: int) -> bool:
        """Grow the field to about ``n_voxels`` cells; True when parameters were replaced (rebuild the optimiser)."""
        return False

    def shrink(self, new_aabb: Tensor) -> None:
        """Restrict the field to a smaller box (after the alpha mask showed the rest is empty)."""
        self.aabb.copy_(new_aabb)

    def grid_resolution(self) -> list[int]:
        """Cells per axis (x, y, z) used to size the alpha mask and the number of samples per ray."""
        raise NotImplementedError

    def cell_size(self) -> float:
        """Mean edge length of a grid cell over the current box (TensoRF's ``units``, averaged)."""
        res = torch.tensor(self.grid_resolution(), device=self.aabb.device, dtype=torch.float32)
        return float(((self.aabb[1] - self.aabb[0]) / (res - 1)).mean())

    # --- occupancy -----------------------------------------------------------------------------------------------
    def normalize(self, xyz: Tensor, aabb: Tensor | None = None) -> Tensor:
        """World positions to [-1, 1] over ``aabb`` (the field's box by default)."""
        aabb = self.aabb if aabb is None else aabb
        return (xyz - aabb[0]) / (aabb[1] - aabb[0]) * 2 - 1

    def occupied(self, xyz: Tensor) -> Tensor:
        """``[P, 3]`` -> ``[P]`` bool: inside the box and, once computed, not culled by the alpha mask."""
        inside = ((xyz >= self.aabb[0]) & (xyz <= self.aabb[1])).all(-1)
        if self.alpha_grid.numel() == 0:
            return inside
        grid = self.alpha_grid[None, None].float()
        coords = self.normalize(xyz, self.alpha_aabb).reshape(1, -1, 1, 1, 3)
        # Trilinear > 0: a sample is kept when any neighbouring cell is occupied (as TensoRF does).
        mask = F.grid_sample(grid, coords, align_corners=True).reshape(-1) > 0
        return inside & mask

    @torch.no_grad()
    def update_alpha_mask(self, step_size: float, threshold: float, chunk: int = 65536) -> Tensor:
        """Evaluate opacity on the field's grid, keep cells above ``threshold`` (dilated by one cell), and return
        the tight box ``[2, 3]`` around them. Culling empty space saves most of the per-sample work afterwards."""
        res = self.grid_resolution()
        axes = [torch.linspace(0, 1, r, device=self.aabb.device) for r in res]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)          # [X, Y, Z, 3]
        xyz = self.aabb[0] * (1 - grid) + self.aabb[1] * grid
        flat = xyz.reshape(-1, 3)
        alpha = torch.cat([1 - torch.exp(-self.density(p) * step_size) for p in flat.split(chunk)])
        alpha = alpha.reshape(res)
        keep = F.max_pool3d(alpha[None, None], kernel_size=3, padding=1, stride=1)[0, 0] > threshold
        self.alpha_grid = keep.permute(2, 1, 0).contiguous()                     # grid_sample wants [Z, Y, X]
        self.alpha_aabb = self.aabb.clone()
        kept = xyz[keep]
        if kept.numel() == 0:
            return self.aabb.clone()
        return torch.stack([kept.amin(0), kept.amax(0)])

    def state_dict_meta(self) -> dict:
        """What is needed to rebuild this field with the right tensor shapes before ``load_state_dict``."""
        return {"aabb": self.aabb.tolist(), "alpha_grid_shape": list(self.alpha_grid.shape)}

    def prepare_for_load(self, meta: dict) -> None:
        """Resize buffers and parameters to the shapes recorded by :meth:`state_dict_meta`."""
        self.alpha_grid = torch.zeros(meta["alpha_grid_shape"], dtype=torch.bool, device=self.aabb.device)
