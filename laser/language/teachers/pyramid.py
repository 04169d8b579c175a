"""Crop pyramids precomputed per image: the 3D-OVS (LASER.md §14.1) and LERF (§14.6) forms, whatever embeds a crop.

:class:`PixelPyramid` and :class:`ScalePyramid` own the crop geometry, the pyramids and their reading
(:meth:`~PixelPyramid.maps`, :meth:`~ScalePyramid.query`, crop batches); a subclass only says how the crop boxes of
one view become embeddings (CLIP's global embedding in ``pyramid_clip``, class shares of the labels in ``oracle``).

* 3D-OVS (:class:`PixelPyramid`): three crop sizes ``floor(min(H, W) / d)`` for ``d`` in (5, 7, 10), stride a
  quarter of the crop, each crop randomly enlarged by up to a quarter of its size on every side; each crop's
  embedding is painted on its pixels and overlapping crops are averaged: ``[S, D, H, W]`` per image (3D-OVS stores
  fp32).
* LERF (:class:`ScalePyramid`): ``num_layers`` crop sizes evenly spaced between ``scale_min`` and ``scale_max``
  (fractions of the image height), each layer a grid of crops overlapping by ``overlap``; :meth:`ScalePyramid.query`
  interpolates trilinearly, between the 4 nearest crop centres in the layers just below and above a scale.

Layer geometry of the LERF pyramid, ours: crop centres on a uniform grid ``k * stride`` (``k = 0 ..``), starting at
the image border and reaching at least the last pixel; crops are clipped to the image. Uniform centres make the
bilinear interpolation exact and simple: pixel ``r`` sits at fractional grid index ``r / stride``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from laser.data.scene import Scene
from laser.errors import ConfigError
from laser.data.patches import PatchBatch
from laser.language.teachers.base import PixelPyramidTeacher, ScalePyramidTeacher, Teacher

Box = tuple[int, int, int, int]               # (top, left, bottom, right) pixels, bottom and right exclusive
CropEmbedder = Callable[[list[Box]], Tensor]  # boxes of one view -> [n, D] embeddings, in box order


def ovs3d_boxes(
    height: int, width: int, divisor: int, stride_fraction: float, jitter_fraction: float, generator: torch.Generator
) -> list[Box]:
    """Crop boxes of one 3D-OVS scale, jittered and clipped to the image."""
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


def paint(boxes: list[Box], embeddings: Tensor, height: int, width: int) -> Tensor:
    """Each pixel's mean of the embeddings ``[n, D]`` of the boxes covering it (§14.1 step 5): ``[D, H, W]``.

    Every box adds its embedding at its four corners of a difference array whose 2-D prefix sum is the per-pixel
    total, so the cost does not grow with the box area (thousands of overlapping boxes per scale). Pixels no box
    covers are 0.
    """
    corners = torch.tensor(boxes, device=embeddings.device)                         # [n, 4]
    top, left, bottom, right = corners.unbind(dim=1)
    flat = torch.cat([top, top, bottom, bottom]) * (width + 1) + torch.cat([left, right, left, right])
    ones = torch.ones(len(boxes), 1, device=embeddings.device, dtype=embeddings.dtype)
    values = torch.cat([embeddings, ones], dim=1).T                                 # [D + 1, n], last: counts
    signed = torch.cat([values, -values, -values, values], dim=1)                   # [D + 1, 4n]
    difference = torch.zeros(values.shape[0], (height + 1) * (width + 1), device=embeddings.device,
                             dtype=embeddings.dtype)
    difference.index_add_(1, flat, signed)
    total = difference.view(-1, height + 1, width + 1).cumsum_(1).cumsum_(2)[:, :height, :width]
    return total[:-1] / total[-1:].clamp(min=1)


def ovs3d_pyramid(
    embed: CropEmbedder,
    height: int,
    width: int,
    divisors: tuple[int, ...] = (5, 7, 10),
    stride_fraction: float = 0.25,
    jitter_fraction: float = 0.25,
    generator: torch.Generator | None = None,
) -> Tensor:
    """3D-OVS's per-pixel multi-scale map of one ``height x width`` image: ``[S, D, H, W]``, as ``embed`` gives."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    maps = []
    for divisor in divisors:
        boxes = ovs3d_boxes(height, width, divisor, stride_fraction, jitter_fraction, generator)
        maps.append(paint(boxes, embed(boxes), height, width))
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
    embed: CropEmbedder,
    height: int,
    width: int,
    scale_min: float = 0.05,
    scale_max: float = 0.5,
    num_layers: int = 7,
    overlap: float = 0.5,
) -> list[LerfLayer]:
    """LERF's pyramid of one ``height x width`` image: ``num_layers`` grids of crop embeddings."""
    layers = []
    for scale in torch.linspace(scale_min, scale_max, num_layers).tolist():
        crop_size, stride, rows, cols = lerf_layer_geometry(height, width, scale, overlap)
        half = crop_size / 2
        boxes = []
        for i in range(rows):
            for j in range(cols):
                top, left = max(0, round(i * stride - half)), max(0, round(j * stride - half))
                bottom, right = min(height, round(i * stride + half)), min(width, round(j * stride + half))
                boxes.append((top, left, max(bottom, top + 1), max(right, left + 1)))
        layers.append(LerfLayer(scale, crop_size, stride, embed(boxes).reshape(rows, cols, -1)))
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


class PyramidTeacher(Teacher):
    """Crop pyramids of every view of a scene, computed in :meth:`prepare`; :class:`PixelPyramid` (3D-OVS) and
    :class:`ScalePyramid` (LERF) say which pyramid and how it is read.

    Subclasses implement :meth:`crop_embedder` (how a view's crop boxes become embeddings). Pyramids are computed on
    the scene's images downsampled ``image_downsample`` times, ``H' = H // image_downsample`` (3D-OVS computes them
    at x8 of the source images). Called on a crop batch, a pyramid teacher also gives a token grid (see each
    subclass's :meth:`crop_tokens`), so that tools reading tokens work on every teacher.

    Args:
        image_downsample: integer downsampling of the pyramid images relative to the scene.
        seed: the crop jitter's random seed.
    """

    def __init__(self, image_downsample: int = 1, seed: int = 0):
        super().__init__()
        if int(image_downsample) != image_downsample or image_downsample < 1:
            raise ConfigError("teacher.image_downsample", f"must be a positive integer, not {image_downsample!r}")
        self.image_downsample = int(image_downsample)
        self.seed = seed
        self.pyramids: list = []  # per view, as :meth:`build_pyramid` returns it
        self.heights: list[int] = []  # per view: H', the pyramid image's height

    def crop_embedder(self, scene: Scene, view: int) -> CropEmbedder:
        """How the crops of ``view`` are embedded: a function of boxes in pyramid pixels (``H' x W'``)."""
        raise NotImplementedError

    def build_pyramid(self, embed: CropEmbedder, height: int, width: int, generator: torch.Generator):
        """The pyramid of one ``height x width`` pyramid image."""
        raise NotImplementedError

    def check_size(self, scene: Scene, height: int, width: int) -> None:
        """Refuse pyramid images too small for the geometry (before any crop is embedded)."""

    def crop_tokens(self, view: int, row: int, col: int, size: int) -> Tensor:
        """``[g, g, D]`` tokens of the crop of side ``size`` at ``(row, col)`` (scene pixels), ``g = size / 16``."""
        raise NotImplementedError

    def pyramid_size(self, scene: Scene) -> tuple[int, int]:
        """``(H', W')``: the scene's image size downsampled ``image_downsample`` times."""
        return scene.height // self.image_downsample, scene.width // self.image_downsample

    def prepare(self, scene: Scene, text_embeddings: Tensor) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        height, width = self.pyramid_size(scene)
        self.check_size(scene, height, width)
        self.pyramids, self.heights = [], []
        for view in range(scene.num_views):
            self.heights.append(height)
            self.pyramids.append(self.build_pyramid(self.crop_embedder(scene, view), height, width, generator))

    def forward(self, batch: PatchBatch) -> Tensor:
        out = [self.crop_tokens(view, row, col, batch.crop_size)
               for view, (row, col) in zip(batch.views.tolist(), batch.top_left.tolist())]
        return torch.stack(out).to(batch.images.device)


class PixelPyramid(PyramidTeacher, PixelPyramidTeacher):
    """3D-OVS's pyramid: per view ``[S, D, H', W']`` per-pixel maps (:func:`ovs3d_pyramid`).

    Args:
        divisors, stride_fraction, jitter_fraction: crop sizes ``min(H', W') // d``, stride and jitter as fractions
            of the crop size.
        image_downsample, seed: as :class:`PyramidTeacher`.
    """

    def __init__(self, divisors: tuple[int, ...] = (5, 7, 10), stride_fraction: float = 0.25,
                 jitter_fraction: float = 0.25, image_downsample: int = 1, seed: int = 0):
        super().__init__(image_downsample, seed)
        self.divisors = tuple(divisors)
        self.stride_fraction = stride_fraction
        self.jitter_fraction = jitter_fraction

    def check_size(self, scene: Scene, height: int, width: int) -> None:
        if min(height, width) < max(self.divisors):
            raise ConfigError("teacher.image_downsample",
                              f"the {width}x{height} pyramid images of scene '{scene.name}' are too small for crops "
                              f"of min(H, W) / {max(self.divisors)} px: lower it or the divisors (teacher.divisors)")

    def build_pyramid(self, embed: CropEmbedder, height: int, width: int, generator: torch.Generator) -> Tensor:
        return ovs3d_pyramid(embed, height, width, self.divisors, self.stride_fraction, self.jitter_fraction,
                             generator)

    def stored_bytes(self) -> int:
        return sum(maps.nbytes for maps in self.pyramids)

    def maps(self, view: int) -> Tensor:
        return self.pyramids[view]

    def crop_tokens(self, view: int, row: int, col: int, size: int) -> Tensor:
        """Block means of the crop's region at pyramid resolution, averaged over the scales."""
        d = self.image_downsample
        region = self.maps(view)[:, :, row // d : (row + size) // d, col // d : (col + size) // d]
        return F.adaptive_avg_pool2d(region.mean(dim=0), size // self.patch_size).permute(1, 2, 0)


class ScalePyramid(PyramidTeacher, ScalePyramidTeacher):
    """LERF's pyramid: per view ``num_layers`` grids of crop embeddings (:func:`lerf_pyramid`), read trilinearly.

    Args:
        scale_min, scale_max, num_layers, overlap: the layers (crop sides as fractions of the image height).
        image_downsample, seed: as :class:`PyramidTeacher`.
    """

    def __init__(self, scale_min: float = 0.05, scale_max: float = 0.5, num_layers: int = 7, overlap: float = 0.5,
                 image_downsample: int = 1, seed: int = 0):
        if not 0 < scale_min <= scale_max:
            raise ConfigError("teacher.scale_min", f"LERF's image-plane scales need 0 < scale_min <= scale_max "
                                                   f"(fractions of the image height), got scale_min={scale_min}, "
                                                   f"scale_max={scale_max}")
        super().__init__(image_downsample, seed)
        self.scale_min, self.scale_max, self.num_layers, self.overlap = scale_min, scale_max, num_layers, overlap

    def build_pyramid(self, embed: CropEmbedder, height: int, width: int,
                      generator: torch.Generator) -> list[LerfLayer]:
        return lerf_pyramid(embed, height, width, self.scale_min, self.scale_max, self.num_layers, self.overlap)

    def stored_bytes(self) -> int:
        return sum(layer.embeddings.nbytes for layers in self.pyramids for layer in layers)

    def query(self, view: int, pixel_rc: Tensor, scale: Tensor) -> Tensor:
        return query_layers(self.pyramids[view], pixel_rc, scale)

    def crop_tokens(self, view: int, row: int, col: int, size: int) -> Tensor:
        """The embedding at the crop's own scale at each token centre."""
        p, d = self.patch_size, self.image_downsample
        grid = size // p
        centres = (torch.arange(grid) * p + p / 2) / d
        rc = torch.stack(torch.meshgrid(centres + row / d, centres + col / d, indexing="ij"), -1)
        scale = torch.full((grid * grid,), size / d / self.heights[view])
        return self.query(view, rc.reshape(-1, 2), scale).reshape(grid, grid, -1)
