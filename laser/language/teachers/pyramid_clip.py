"""Crop pyramids of global CLIP image embeddings: 3D-OVS (LASER.md §14.1) and LERF (§14.6).

The crop geometry and the reading of the pyramids are those of :mod:`laser.language.teachers.pyramid`; here each
crop goes through CLIP's own preprocessing to its global image embedding (§14.1 step 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from laser.data.scene import Scene
from laser.language.clip_model import ClipModel
from laser.language.teachers.pyramid import CropEmbedder, PixelPyramid, ScalePyramid


def global_embeddings(clip: ClipModel, crops: list[Tensor], batch_size: int = 64) -> Tensor:
    """CLIP's global image embedding of each crop, through CLIP's own preprocessing (§14.1 step 4).

    Each ``[h, w, 3]`` crop in [0, 1] is resized (bicubic, antialiased) so its short side is the model's input
    size, centre-cropped to a square and normalised. Returns ``[n, D]`` fp32, not normalised.
    """
    size = clip.image_size
    prepared: list[Tensor | None] = [None] * len(crops)
    # Crops of one scale mostly share a size: resize each size group in one call.
    groups: dict[tuple[int, int], list[int]] = {}
    for index, crop in enumerate(crops):
        groups.setdefault(tuple(crop.shape[:2]), []).append(index)
    for (height, width), indices in groups.items():
        scale = size / min(height, width)
        new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
        stacked = torch.stack([crops[i] for i in indices]).permute(0, 3, 1, 2)
        resized = F.interpolate(stacked, size=(new_h, new_w), mode="bicubic", align_corners=False,
                                antialias=True).clamp(0, 1)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        square = resized[:, :, top : top + size, left : left + size].permute(0, 2, 3, 1)
        for i, crop in zip(indices, square):
            prepared[i] = crop
    out = []
    for first in range(0, len(prepared), batch_size):
        pixels = clip.normalize_images(torch.stack(prepared[first : first + batch_size]).to(clip.device))
        with torch.no_grad(), clip.autocast():
            out.append(clip.model.encode_image(pixels).float())
    return torch.cat(out)


class ClipCrops:
    """Crops embedded by CLIP's global image embedding (fp32, not normalised), for a :class:`PyramidTeacher`."""

    image_downsample: int

    def use_clip(self, clip: ClipModel, batch_size: int) -> None:
        self.clip = clip
        self.batch_size = batch_size
        self.embed_dim = clip.embed_dim
        self.patch_size = clip.patch_size

    def crop_embedder(self, scene: Scene, view: int) -> CropEmbedder:
        image = self._pyramid_image(scene, view)
        return lambda boxes: global_embeddings(self.clip, [image[t:b, x0:x1] for t, x0, b, x1 in boxes],
                                               self.batch_size)

    def _pyramid_image(self, scene: Scene, view: int) -> Tensor:
        """The image the crops are cut from: the view's, downsampled ``image_downsample`` times (3D-OVS: 8)."""
        image = scene.images[view]
        if self.image_downsample == 1:
            return image
        resized = F.interpolate(image.permute(2, 0, 1)[None], size=self.pyramid_size(scene), mode="bicubic",
                                align_corners=False, antialias=True)
        return resized[0].permute(1, 2, 0).clamp(0, 1)


class PixelPyramidClip(ClipCrops, PixelPyramid):
    """3D-OVS's per-pixel crop pyramid of CLIP embeddings. ``batch_size``: crops per CLIP forward; ``geometry``:
    :class:`PixelPyramid`'s."""

    def __init__(self, clip: ClipModel, batch_size: int = 64, **geometry):
        PixelPyramid.__init__(self, **geometry)
        self.use_clip(clip, batch_size)


class ScalePyramidClip(ClipCrops, ScalePyramid):
    """LERF's crop pyramid of CLIP embeddings. ``batch_size``: crops per CLIP forward; ``geometry``:
    :class:`ScalePyramid`'s."""

    def __init__(self, clip: ClipModel, batch_size: int = 64, **geometry):
        ScalePyramid.__init__(self, **geometry)
        self.use_clip(clip, batch_size)
