"""Laser's patch sampler: random square crops for the teacher and one block-mean ray per teacher token (LASER.md §9.3).

Each step takes ``patch_num`` random ``P x P`` crops of the training views (at the patch downsampling, x5 on
3D-OVS). The teacher gives one token per ``token x token`` block of a crop, ``g = P / token`` per side, and the field
renders one ray per token: the average of the NDC ray origins and directions of the block's pixels, supervised in
colour by the block's average RGB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from laser.data.scene import Scene
from laser.errors import ConfigError


@dataclass
class PatchBatch:
    """A batch of square crops of the scene's images at its working resolution: what a token teacher reads."""

    images: Tensor               # [B, P, P, 3] float in [0, 1]
    views: Tensor                # [B] long, view index of each crop
    top_left: Tensor             # [B, 2] long, (row, col) of the crop's first pixel in its view
    labels: Tensor | None = None  # [B, P, P] long ground-truth class (-1 unlabelled), when the scene has labels

    @property
    def crop_size(self) -> int:
        return int(self.images.shape[1])


@dataclass
class PatchSample:
    """One step's crops and the rays that render their tokens, in the token order of the teacher's output.

    ``rays`` and ``rgb`` are row-major over (crop, token row, token column): row ``(b * g + i) * g + j`` is token
    ``(i, j)`` of crop ``b``, i.e. the order of a ``[B, g, g, D]`` teacher output reshaped to ``[B*g*g, D]``.
    """

    batch: PatchBatch          # images [B, P, P, 3], views [B], top_left [B, 2] (row, col), labels [B, P, P] or None
    rays: Tensor               # [B*g*g, 6] block-mean ray (origin, direction)
    rgb: Tensor                # [B*g*g, 3] block-mean colour
    grid: tuple[int, int, int]  # (B, g, g)


class PatchSampler:
    """Draws ``patch_num`` random ``patch_size`` crops per call from ``views`` of ``scene``.

    Crop corners are uniform over every pixel position that keeps the crop inside the image (not aligned to the
    token grid), as in the official loader. The crops' views follow ``view_order``:

    * ``permutation`` (the official ``InfiniteSampler``): consecutive crops walk through random permutations of the
      views, one after another, so a step repeats a view only where it straddles two permutations.
    * ``replacement``: each crop's view drawn independently (most steps of 8 crops then repeat a view).

    Everything comes from the sampler's own seeded generator, whose state (and the rest of the current
    permutation) :meth:`state_dict` saves so that a resumed run draws the same crops (the official code is unseeded).
    """

    VIEW_ORDERS = ("permutation", "replacement")

    def __init__(self, scene: Scene, patch_size: int, patch_num: int, token_size: int = 16,
                 views: list[int] | None = None, seed: int = 0, view_order: str = "permutation"):
        self.check(scene, patch_size, patch_num, token_size, view_order)
        self.views = list(scene.train_views if views is None else views)
        if not self.views or not all(0 <= v < scene.num_views for v in self.views):
            raise ValueError(f"views {self.views} must be a non-empty list of view indices of scene '{scene.name}' "
                             f"({scene.num_views} views)")
        self.scene = scene
        self.patch_size = patch_size
        self.patch_num = patch_num
        self.token_size = token_size
        # Rays of every sampled view once, so that a crop is a slice (a 3D-OVS view at x5 is a few MB).
        self.view_rays = torch.stack([scene.rays(v).reshape(scene.height, scene.width, 6) for v in self.views])
        self.generator = torch.Generator().manual_seed(seed)
        self.view_order = view_order
        self.pending = torch.empty(0, dtype=torch.long)   # the rest of the current permutation of view slots

    @classmethod
    def check(cls, scene: Scene, patch_size: int, patch_num: int, token_size: int = 16,
              view_order: str = "permutation") -> None:
        """Refuse crop settings that cannot work on ``scene``, with the setting to change; cheap, so a run can call
        it before training anything."""
        if patch_size <= 0 or token_size <= 0 or patch_size % token_size:
            raise ConfigError("model.supervision.patch_size", f"crop size {patch_size} px is not a positive multiple "
                                                              f"of the teacher's token size {token_size} px")
        if patch_size > scene.height or patch_size > scene.width:
            raise ConfigError("model.supervision.patch_size",
                              f"crops of {patch_size} px do not fit the {scene.width}x{scene.height} images of scene "
                              f"'{scene.name}' at its patch resolution: lower the crop size or the patch "
                              f"downsampling (scene.downsample.patch)")
        if patch_num <= 0:
            raise ConfigError("model.supervision.patch_num", f"crops per step must be positive, got {patch_num}")
        if view_order not in cls.VIEW_ORDERS:
            raise ConfigError("model.supervision.view_order", f"must be one of {cls.VIEW_ORDERS}, not {view_order!r}")

    @property
    def grid_size(self) -> int:
        """Tokens per crop side, ``g = P / token_size``."""
        return self.patch_size // self.token_size

    def sample(self) -> PatchSample:
        """Draw one step's crops: ``B = patch_num`` crops of ``P x P`` pixels and their ``B*g*g`` token rays."""
        b, p, g = self.patch_num, self.patch_size, self.grid_size
        slots = self._view_slots(b)
        rows = torch.randint(self.scene.height - p + 1, (b,), generator=self.generator)
        cols = torch.randint(self.scene.width - p + 1, (b,), generator=self.generator)
        views = torch.tensor(self.views)[slots]

        corners = list(zip(slots.tolist(), views.tolist(), rows.tolist(), cols.tolist()))
        images = torch.stack([self.scene.images[v, r : r + p, c : c + p] for _, v, r, c in corners])
        rays = torch.stack([self.view_rays[s, r : r + p, c : c + p] for s, _, r, c in corners])
        labels = None
        if self.scene.labels is not None:
            labels = torch.stack([self.scene.labels[v, r : r + p, c : c + p] for _, v, r, c in corners])

        # Rays and colours pooled together, as the official AvgPool(16, ceil_mode=True) does to each of them.
        pixels = torch.cat([rays, images.to(rays)], dim=-1).permute(0, 3, 1, 2)              # [B, 9, P, P]
        blocks = F.avg_pool2d(pixels, self.token_size, self.token_size, ceil_mode=True)     # [B, 9, g, g]
        blocks = blocks.permute(0, 2, 3, 1).reshape(b * g * g, 9)

        batch = PatchBatch(images=images, views=views, top_left=torch.stack([rows, cols], dim=1), labels=labels)
        return PatchSample(batch=batch, rays=blocks[:, :6], rgb=blocks[:, 6:], grid=(b, g, g))

    def _view_slots(self, count: int) -> Tensor:
        """``[count]`` indices into ``self.views`` in the configured ``view_order``."""
        if self.view_order == "replacement":
            return torch.randint(len(self.views), (count,), generator=self.generator)
        while len(self.pending) < count:
            self.pending = torch.cat([self.pending, torch.randperm(len(self.views), generator=self.generator)])
        slots, self.pending = self.pending[:count], self.pending[count:]
        return slots

    def state_dict(self) -> dict[str, Any]:
        """The generator state and the permutation in progress: restoring them replays the crops that would have
        followed."""
        return {"generator": self.generator.get_state(), "pending": self.pending.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.pending = state["pending"].clone()
