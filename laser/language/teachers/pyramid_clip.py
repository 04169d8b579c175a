"""Crop pyramids of global CLIP image embeddings, precomputed per image: 3D-OVS (LASER.md §14.1) and LERF (§14.6).

* ``ovs3d`` form: three crop sizes ``floor(min(H, W) / d)`` for ``d`` in (5, 7, 10), stride a quarter of the
  crop, each crop randomly enlarged by up to a quarter of its size on every side; each crop's global embedding is
  painted on its pixels and overlapping crops are averaged: ``[S, D, H, W]`` per image (3D-OVS stores fp32).
* ``lerf`` form: ``num_layers`` crop sizes evenly spaced between ``scale_min`` and ``scale_max`` (fractions of the
  image height), each layer a grid of crops overlapping by ``overlap``; :meth:`PyramidClipTeacher.query`
  interpolates trilinearly, between the 4 nearest crop centres in the layers just below and above a scale.

Layer geometry of the LERF form, ours: crop centres on a uniform grid ``k * stride`` (``k = 0 ..``), starting at
the image border and reaching at least the last pixel; crops are clipped to the image. Uniform centres make the
bilinear interpolation exact and simple: pixel ``r`` sits at fractional grid index ``r / stride``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from laser.data.scene import Scene
from laser.language.clip_model import ClipModel
from laser.language.teachers.base import PatchBatch, Teacher

FORMS = ("ovs3d", "lerf")


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


def ovs3d_boxes(
    height: int, width: int, divisor: int, stride_fraction: float, jitter_fraction: float, generator: torch.Generator
) -> list[tuple[int, int, int, int]]:
    """Crop boxes ``(top, left, bottom, right)`` of one 3D-OVS scale, jittered and clipped to the image."""
    size = min(height, width) // divisor
    stride = max(1, int(size * stride_fraction))
    jitter = int(size * jitter_fraction)
    boxes = []
    for top in _grid_starts(height, size, stride):
        for left in _grid_starts(width, size, stride):
            # Enlarge each side by U{0..jitter}, independently (§14.1 step 3).
            grow = torch.randint(0, jitter + 1, (4,), generator=generator).tolist()
            boxes.append((max(0, top - grow[0]), max(0, left - grow[1]),
                          min(height, top + size + grow[2]), min(width, left + size + grow[3])))
    return boxes


def _grid_starts(length: int, size: int, stride: int) -> list[int]:
    """Starts every ``stride``, plus one last start aligned to the end when a remainder is left (§14.1 step 2)."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def ovs3d_pyramid(
    clip: ClipModel,
    image: Tensor,
    divisors: tuple[int, ...] = (5, 7, 10),
    stride_fraction: float = 0.25,
    jitter_fraction: float = 0.25,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> Tensor:
    """3D-OVS's per-pixel multi-scale map of one image ``[H, W, 3]``: ``[S, D, H, W]`` fp32, not normalised."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    height, width, _ = image.shape
    maps = []
    for divisor in divisors:
        boxes = ovs3d_boxes(height, width, divisor, stride_fraction, jitter_fraction, generator)
        embeddings = global_embeddings(clip, [image[t:b, x0:x1] for t, x0, b, x1 in boxes], batch_size)
        total = torch.zeros(embeddings.shape[1], height, width, device=embeddings.device)
        count = torch.zeros(height, width, device=embeddings.device)
        for (t, x0, b, x1), embedding in zip(boxes, embeddings):
            total[:, t:b, x0:x1] += embedding[:, None, None]
            count[t:b, x0:x1] += 1
        maps.append(total / count)
    return torch.stack(maps)


@dataclass
class LerfLayer:
    """One LERF pyramid layer: crops of side ``crop_size`` px centred every ``stride`` px."""

    scale: float        # crop side as a fraction of the image height
    crop_size: int      # pixels
    stride: float       # pixels between crop centres
    embeddings: Tensor  # [rows, cols, D], crop (i, j) centred at (i * stride, j * stride)


def lerf_layer_geometry(height: int, width: int, scale: float, overlap: float) -> tuple[int, float, int, int]:
    """``(crop_size, stride, rows, cols)`` of a layer whose crops overlap by ``overlap``."""
    crop_size = max(1, round(scale * height))
    stride = max(1.0, crop_size * (1.0 - overlap))
    rows = math.ceil((height - 1) / stride) + 1
    cols = math.ceil((width - 1) / stride) + 1
    return crop_size, stride, rows, cols


def lerf_pyramid(
    clip: ClipModel,
    image: Tensor,
    scale_min: float = 0.05,
    scale_max: float = 0.5,
    num_layers: int = 7,
    overlap: float = 0.5,
    batch_size: int = 64,
) -> list[LerfLayer]:
    """LERF's pyramid of one image ``[H, W, 3]``: ``num_layers`` grids of crop embeddings (fp32, unnormalised)."""
    height, width, _ = image.shape
    layers = []
    for scale in torch.linspace(scale_min, scale_max, num_layers).tolist():
        crop_size, stride, rows, cols = lerf_layer_geometry(height, width, scale, overlap)
        half = crop_size / 2
        crops = []
        for i in range(rows):
            for j in range(cols):
                top, left = max(0, round(i * stride - half)), max(0, round(j * stride - half))
                bottom, right = min(height, round(i * stride + half)), min(width, round(j * stride + half))
                crops.append(image[top : max(bottom, top + 1), left : max(right, left + 1)])
        embeddings = global_embeddings(clip, crops, batch_size)
        layers.append(LerfLayer(scale, crop_size, stride, embeddings.reshape(rows, cols, -1)))
    return layers


def bilinear_layer(layer: LerfLayer, pixel_rc: Tensor) -> Tensor:
    """Bilinear interpolation of a layer's crop embeddings at pixels ``[R, 2]`` (row, col) -> ``[R, D]``."""
    rows, cols, _ = layer.embeddings.shape
    u = (pixel_rc.float() / layer.stride).to(layer.embeddings.device)
    r0 = u[:, 0].floor().clamp(0, rows - 2 if rows > 1 else 0).long()
    c0 = u[:, 1].floor().clamp(0, cols - 2 if cols > 1 else 0).long()
    r1, c1 = (r0 + 1).clamp(max=rows - 1), (c0 + 1).clamp(max=cols - 1)
    wr = (u[:, 0] - r0).clamp(0, 1)[:, None]
    wc = (u[:, 1] - c0).clamp(0, 1)[:, None]
    e = layer.embeddings
    top = e[r0, c0] * (1 - wc) + e[r0, c1] * wc
    bottom = e[r1, c0] * (1 - wc) + e[r1, c1] * wc
    return top * (1 - wr) + bottom * wr


def query_layers(layers: list[LerfLayer], pixel_rc: Tensor, scale: Tensor) -> Tensor:
    """Trilinear LERF target: bilinear in the layers just below and above each scale, linear between them.

    ``pixel_rc`` ``[R, 2]`` pixels, ``scale`` ``[R]`` fractions of the image height (clamped to the pyramid's
    range). Returns ``[R, D]``.
    """
    scales = torch.tensor([layer.scale for layer in layers], device=scale.device)
    scale = scale.float().clamp(scales[0], scales[-1])
    below = (torch.searchsorted(scales, scale, right=True) - 1).clamp(0, max(len(layers) - 2, 0))
    above = (below + 1).clamp(max=len(layers) - 1)
    gap = (scales[above] - scales[below]).clamp(min=1e-12)
    weight = ((scale - scales[below]) / gap).clamp(0, 1)[:, None]
    per_layer = torch.stack([bilinear_layer(layer, pixel_rc) for layer in layers])  # [L, R, D]
    index = torch.arange(len(pixel_rc), device=per_layer.device)
    below, above, weight = below.to(per_layer.device), above.to(per_layer.device), weight.to(per_layer.device)
    return per_layer[below, index] * (1 - weight) + per_layer[above, index] * weight


class PyramidClipTeacher(Teacher):
    """Precomputed crop pyramids of global CLIP embeddings, for 3D-OVS (``form=ovs3d``) or LERF (``form=lerf``).

    The methods read the pyramid directly: :meth:`maps` (3D-OVS, per-pixel ``[S, D, H, W]``) and :meth:`query`
    (LERF). Called on a crop batch, the teacher gives a token grid for interface compatibility: the mean over
    scales of each 16x16 block (``ovs3d``), or the embedding at the crop's own scale at each token centre (``lerf``).
    """

    def __init__(
        self,
        clip: ClipModel,
        form: str = "ovs3d",
        image_downsample: int = 1,
        divisors: tuple[int, ...] = (5, 7, 10),
        stride_fraction: float = 0.25,
        jitter_fraction: float = 0.25,
        scale_min: float = 0.05,
        scale_max: float = 0.5,
        num_layers: int = 7,
        overlap: float = 0.5,
        batch_size: int = 64,
        seed: int = 0,
    ):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"pyramid form must be one of {FORMS}, not {form!r}")
        self.clip = clip
        self.form = form
        self.image_downsample = image_downsample
        self.divisors = tuple(divisors)
        self.stride_fraction = stride_fraction
        self.jitter_fraction = jitter_fraction
        self.scale_min, self.scale_max, self.num_layers, self.overlap = scale_min, scale_max, num_layers, overlap
        self.batch_size = batch_size
        self.seed = seed
        self.embed_dim = clip.embed_dim
        self.patch_size = clip.patch_size
        self.pyramids: list = []  # per view: Tensor [S, D, H', W'] (ovs3d) or list[LerfLayer] (lerf)
        self.heights: list[int] = []  # per view: H', the pyramid image's height

    def prepare(self, scene: Scene, text_embeddings: Tensor) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        self.pyramids, self.heights = [], []
        for view in range(scene.num_views):
            image = self._working_image(scene.images[view])
            self.heights.append(image.shape[0])
            if self.form == "ovs3d":
                pyramid = ovs3d_pyramid(self.clip, image, self.divisors, self.stride_fraction, self.jitter_fraction,
                                        generator, self.batch_size)
            else:
                pyramid = lerf_pyramid(self.clip, image, self.scale_min, self.scale_max, self.num_layers,
                                       self.overlap, self.batch_size)
            self.pyramids.append(pyramid)

    def _working_image(self, image: Tensor) -> Tensor:
        """The image the pyramid is computed on: the scene's, downsampled ``image_downsample`` times (3D-OVS: 8)."""
        if self.image_downsample == 1:
            return image
        height, width = image.shape[0] // self.image_downsample, image.shape[1] // self.image_downsample
        resized = F.interpolate(image.permute(2, 0, 1)[None], size=(height, width), mode="bicubic",
                                align_corners=False, antialias=True)
        return resized[0].permute(1, 2, 0).clamp(0, 1)

    def maps(self, view: int) -> Tensor:
        """3D-OVS form: ``[S, D, H', W']`` per-pixel embeddings of one view (H' = H / image_downsample)."""
        if self.form != "ovs3d":
            raise ValueError("maps() needs form=ovs3d")
        return self.pyramids[view]

    def query(self, view: int, pixel_rc: Tensor, scale: Tensor) -> Tensor:
        """LERF form: targets ``[R, D]`` at pixels ``[R, 2]`` (row, col, in pyramid pixels) and scales ``[R]``."""
        if self.form != "lerf":
            raise ValueError("query() needs form=lerf")
        return query_layers(self.pyramids[view], pixel_rc, scale)

    def forward(self, batch: PatchBatch) -> Tensor:
        p, size, d = self.patch_size, batch.crop_size, self.image_downsample
        grid = size // p
        out = []
        for view, (row, col) in zip(batch.views.tolist(), batch.top_left.tolist()):
            if self.form == "ovs3d":
                # Block means of the crop's region at pyramid resolution, averaged over the scales.
                region = self.pyramids[view][:, :, row // d : (row + size) // d, col // d : (col + size) // d]
                tokens = F.adaptive_avg_pool2d(region.mean(dim=0), grid)          # [D, g, g]
                out.append(tokens.permute(1, 2, 0))
            else:
                centres = (torch.arange(grid) * p + p / 2) / d
                rc = torch.stack(torch.meshgrid(centres + row / d, centres + col / d, indexing="ij"), -1)
                scale = torch.full((grid * grid,), size / d / self.heights[view])
                out.append(self.query(view, rc.reshape(-1, 2), scale).reshape(grid, grid, -1))
        return torch.stack(out).to(batch.images.device)
