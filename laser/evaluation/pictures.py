"""Pictures of segmentations and relevancy: pure functions from tensors or arrays to ``uint8`` RGB arrays.

The segmentation overlay follows the 3D-OVS / Laser test script (LASER.md §10): class colours blended over the
RGB render with weight 0.65, and black class boundaries. Writing the pictures is the caller's job; ``save_png`` is
the one helper that touches the disk.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

ArrayLike = Tensor | np.ndarray

# Tableau 10: a qualitative palette whose first colours are far apart and readable over photographs.
QUALITATIVE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
], dtype=np.uint8)

GOLDEN_RATIO_CONJUGATE = 0.6180339887498949

# Turbo (Mikhailov 2019) sampled at 17 evenly spaced points; linear interpolation between them stays within
# 7/255 of the full 256-entry table, which is plenty for a picture and saves carrying the table.
TURBO = np.array([
    (48, 18, 59), (64, 64, 162), (70, 107, 227), (66, 148, 255), (40, 188, 235), (24, 221, 194),
    (50, 242, 152), (109, 254, 98), (164, 252, 60), (203, 237, 52), (236, 209, 58), (253, 174, 53),
    (251, 129, 34), (236, 83, 15), (210, 49, 5), (172, 23, 1), (122, 4, 3),
], dtype=np.uint8)

COLOUR_MAPS = {"turbo": TURBO}

WHITE = (255, 255, 255)


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def to_uint8(image: ArrayLike) -> np.ndarray:
    """``[..., 3]`` floats in [0, 1] (clipped), an array or a tensor (on any device) -> ``uint8``."""
    return np.round(np.clip(_numpy(image), 0.0, 1.0) * 255.0).astype(np.uint8)


def class_palette(num_classes: int) -> np.ndarray:
    """Deterministic, distinct class colours ``[C, 3] uint8``.

    The first ten are Tableau 10; beyond that a golden-ratio walk round the hue circle, which never repeats a hue
    and keeps consecutive classes far apart. Class ``i`` has the same colour whatever ``num_classes`` is, so a
    scene's pictures stay comparable when its class list grows.
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be non-negative, got {num_classes}")
    extra = []
    for k in range(max(0, num_classes - len(QUALITATIVE))):
        hue = (0.1 + k * GOLDEN_RATIO_CONJUGATE) % 1.0
        # Alternating saturation and value separates the rare near-equal hues the walk produces for many classes.
        saturation = (0.85, 0.55)[k % 2]
        value = (0.95, 0.75)[(k // 2) % 2]
        extra.append(np.round(np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255))
    colours = np.concatenate([QUALITATIVE, np.array(extra, dtype=np.uint8).reshape(-1, 3)])
    return colours[:num_classes]


def _class_colours(labels: ArrayLike, palette: ArrayLike) -> np.ndarray:
    """``[H, W]`` integer labels -> ``[H, W, 3] uint8`` palette colours."""
    labels, palette = _numpy(labels), _numpy(palette).astype(np.uint8)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(palette)):
        raise ValueError(f"labels span [{labels.min()}, {labels.max()}] but the palette has {len(palette)} colours")
    return palette[labels]


def label_map_image(labels: ArrayLike, palette: ArrayLike) -> np.ndarray:
    """``[H, W]`` integer labels -> ``[H, W, 3] uint8``, each pixel its class colour."""
    return _class_colours(labels, palette)


def class_boundaries(labels: ArrayLike) -> np.ndarray:
    """``[H, W]`` labels -> ``[H, W]`` bool, true where a 4-neighbour has another label.

    Both pixels of every differing pair are marked, so a boundary is two pixels wide and sits symmetrically
    between the classes instead of eating into one of them.
    """
    labels = _numpy(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:] != labels[:-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def segmentation_overlay(rgb: ArrayLike, labels: ArrayLike, palette: ArrayLike, alpha: float = 0.65,
                         boundaries: bool = True) -> np.ndarray:
    """Class colours over a render: ``[H, W, 3]`` RGB in [0, 1] and ``[H, W]`` labels -> ``[H, W, 3] uint8``.

    Each pixel is ``(1 - alpha) * rgb + alpha * colour``, and the plain render where its label is -1 (no class: a
    query's pixels below its threshold); with ``boundaries`` the class boundaries are black (independently of
    ``alpha``, so ``alpha=0`` shows the outlines over the plain render).
    """
    rgb = _numpy(rgb).astype(np.float64)
    labels = _numpy(labels)
    colours = _class_colours(np.maximum(labels, 0), palette)
    if rgb.shape != colours.shape:
        raise ValueError(f"rgb {rgb.shape} does not match labels {colours.shape[:2]} (expected [H, W, 3])")
    share = np.where(labels[..., None] >= 0, alpha, 0.0)
    image = to_uint8((1.0 - share) * rgb + share * colours / 255.0)
    if boundaries:
        image[class_boundaries(labels)] = 0
    return image


def relevancy_map(scores: ArrayLike, cmap: str = "turbo",
                  value_range: tuple[float, float] | None = None) -> np.ndarray:
    """``[H, W]`` scores -> ``[H, W, 3] uint8`` through a colour map, min-max normalised per map, or over
    ``value_range`` ``(low, high)`` when given (a video keeps one range for all its frames; values outside are
    clipped).

    The lowest score gets the map's first colour and the highest its last; a constant map is all first colour.
    Per-map normalisation shows where a query is most relevant, not how relevant: compare maps by their numbers.
    """
    if cmap not in COLOUR_MAPS:
        raise ValueError(f"unknown colour map {cmap!r}; available: {sorted(COLOUR_MAPS)}")
    scores = _numpy(scores).astype(np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [H, W], got shape {scores.shape}")
    low, high = value_range if value_range is not None else (scores.min(), scores.max())
    unit = np.clip((scores - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(scores)
    anchors = COLOUR_MAPS[cmap].astype(np.float64)
    positions = np.linspace(0.0, 1.0, len(anchors))
    channels = [np.interp(unit, positions, anchors[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def legend(classes: list[str], palette: ArrayLike, font_size: int = 12, padding: int = 6) -> np.ndarray:
    """A colour key ``[h, w, 3] uint8``: one row per class, a swatch in its colour and its name, on white.

    Uses Pillow's built-in font (its bundled Aileron where FreeType is available, else the bitmap font), so no
    font file is needed. Height grows with the number of classes, width with the longest name.
    """
    palette = _numpy(palette).astype(np.uint8)
    if len(palette) < len(classes):
        raise ValueError(f"{len(classes)} classes but only {len(palette)} colours")
    font = ImageFont.load_default(size=font_size)
    boxes = [font.getbbox(name) for name in classes]
    swatch = font_size + 2
    row = swatch + padding // 2
    text_width = max((right for _, _, right, _ in boxes), default=0)
    width = padding + swatch + padding + text_width + padding
    height = padding + row * len(classes) - padding // 2 + padding
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    for i, (name, (_, top, _, bottom)) in enumerate(zip(classes, boxes)):
        y = padding + i * row
        # A dark outline keeps pale swatches visible on the white background.
        draw.rectangle((padding, y, padding + swatch - 1, y + swatch - 1), fill=tuple(int(v) for v in palette[i]),
                       outline=(64, 64, 64))
        text_y = y + (swatch - (bottom - top)) // 2 - top
        draw.text((padding + swatch + padding, text_y), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.uint8)


def with_legend(image: np.ndarray, legend_image: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` picture and ``[h, w, 3]`` legend -> ``[max(H, h), W + w, 3] uint8``, legend on the right,
    both top-aligned and the shorter one padded with white below."""
    height = max(image.shape[0], legend_image.shape[0])

    def pad(picture: np.ndarray) -> np.ndarray:
        below = np.full((height - picture.shape[0], picture.shape[1], 3), 255, dtype=np.uint8)
        return np.concatenate([picture.astype(np.uint8), below], axis=0)

    return np.concatenate([pad(image), pad(legend_image)], axis=1)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a ``[H, W, 3] uint8`` picture, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
