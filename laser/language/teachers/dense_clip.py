"""Laser's teacher: dense CLIP features of the random crops of each step, computed on the fly (LASER.md §3.1).

Optionally (``cache_dir`` set) the features of every whole view are precomputed once by sliding windows and stored
(:mod:`laser.language.cache`); a crop's tokens are then read from the cached token grid, bilinearly at the crop's
token centres. That is an approximation of the on-the-fly features (a token sees its whole window, not the crop),
traded for one ViT pass per window instead of per crop and step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from laser.data.scene import Scene
from laser.language.cache import FeatureCache, fingerprint
from laser.language.clip_model import ClipModel
from laser.language.dense_clip import DenseClip
from laser.data.patches import PatchBatch
from laser.language.teachers.base import TokenTeacher


class DenseClipTeacher(TokenTeacher):
    """Dense CLIP (SCLIP or MaskCLIP last block) of each crop: ``[B, P/16, P/16, 512]``, not normalised.

    Args:
        clip: the loaded CLIP.
        mode: ``sclip`` (Laser's default) or ``maskclip`` (Laser's ``lawn`` config).
        pos_interpolation: the positional embedding of crops other than 224 px (``scale_factor`` or ``resize``,
            :func:`~laser.language.dense_clip.interpolate_pos_embed`); null: the mode's official way.
        cache_dir: folder for precomputed whole-view features; null computes every crop on the fly, as Laser does.
        window: sliding-window side in pixels for the cache.
        stride: sliding-window step in pixels for the cache.
        batch_size: windows per forward pass when filling the cache.
    """

    def __init__(
        self,
        clip: ClipModel,
        mode: str = "sclip",
        pos_interpolation: str | None = None,
        cache_dir: str | None = None,
        window: int = 224,
        stride: int = 112,
        batch_size: int = 16,
    ):
        super().__init__()
        self.dense = DenseClip(clip, mode, pos_interpolation)
        self.cache_dir = cache_dir
        self.window, self.stride, self.batch_size = window, stride, batch_size
        self.patch_size = clip.patch_size
        self.embed_dim = clip.embed_dim
        self.cached: np.ndarray | None = None  # [N, ceil(H/16), ceil(W/16), D] fp16 memory map

    def cache_manifest(self, scene: Scene) -> dict:
        """Everything the cached features depend on."""
        return {
            "teacher": "dense_clip",
            "clip": self.dense.clip.identity,
            "mode": self.dense.mode,
            "pos_interpolation": self.dense.pos_interpolation,
            "window": self.window,
            "stride": self.stride,
            "images": list(scene.images.shape),
            "images_fingerprint": fingerprint(scene.images),
        }

    def prepare(self, scene: Scene, text_embeddings: Tensor) -> None:
        if self.cache_dir is None:
            return
        p = self.patch_size
        rows, cols = -(-scene.height // p), -(-scene.width // p)
        cache = FeatureCache(Path(self.cache_dir) / scene.name / f"dense_clip_{self.dense.mode}")
        self.cached = cache.load_or_build(
            self.cache_manifest(scene),
            (scene.num_views, rows, cols, self.embed_dim),
            lambda view: self.dense.sliding_window(scene.images[view], self.window, self.stride, self.batch_size),
        )

    def forward(self, batch: PatchBatch) -> Tensor:
        if self.cached is None:
            return self.dense(batch.images)
        out = [self._from_cache(v, r, c, batch.crop_size)
               for v, (r, c) in zip(batch.views.tolist(), batch.top_left.tolist())]
        return torch.stack(out).to(batch.images.device)

    def stored_bytes(self) -> int:
        return 0 if self.cached is None else int(self.cached.nbytes)

    def _from_cache(self, view: int, row: int, col: int, size: int) -> Tensor:
        """Bilinear read of a crop's token centres from the cached grid: ``[P/16, P/16, D]`` fp32.

        Crop token i is centred at pixel ``row + 16 i + 8``, i.e. at fractional grid index ``row / 16 + i``.
        """
        p, grid = self.patch_size, size // self.patch_size
        grid_rows, grid_cols = self.cached.shape[1:3]
        r0, c0 = row // p, col // p
        fr, fc = (row % p) / p, (col % p) / p
        slab = torch.from_numpy(np.asarray(
            self.cached[view, r0 : min(r0 + grid + 1, grid_rows), c0 : min(c0 + grid + 1, grid_cols)]
        ).astype(np.float32))
        # Past the last token (a crop flush with the border) the last token is repeated.
        slab = torch.nn.functional.pad(slab.permute(2, 0, 1)[None], (0, grid + 1 - slab.shape[1],
                                                                     0, grid + 1 - slab.shape[0]), mode="replicate")
        slab = slab[0].permute(1, 2, 0)
        top = slab[:grid, :grid] * (1 - fc) + slab[:grid, 1 : grid + 1] * fc
        bottom = slab[1 : grid + 1, :grid] * (1 - fc) + slab[1 : grid + 1, 1 : grid + 1] * fc
        return top * (1 - fr) + bottom * fr
