"""Oracle teacher: dense-CLIP-like features made from ground-truth labels. A TEST HARNESS, not a method.

It lets the 3D pipeline (field, losses, evaluation) be trained and measured on scenes that have per-pixel labels
(the synthetic generator writes ``labels/``) on machines without CLIP weights. Its features are built from the
class text embeddings and the labels:

1. **Confusion** (:func:`draw_confusion`): some regions get the class of the text embedding most similar to their own
   (cosine). Real dense CLIP repeats the same mistake on the same object in most views, so one share of the
   confusion is drawn *once per scene* per object (a class is one object in 3D-OVS-style scenes) and applied in
   each view with a probability; the other share is drawn independently per (view, region), a region being an
   object's pixels inside one cell of a coarse grid.
2. **Patch averaging** (:func:`token_fractions`): one token per 16x16 block, the class fractions of its pixels, as
   a ViT token mixes everything in its patch.
3. **Boundary blur**: a Gaussian on the token grid (in tokens), so tokens near a boundary borrow from their
   neighbours; interior tokens of a region are unchanged by it.
4. **The noise model** (``noise_model``), which turns class fractions into features:
   - ``dense_clip`` (the default): :mod:`laser.language.teachers.clip_like`: a large image-global component far
     from the text, context dependence, per-view blotches, artifact tokens and a little independent noise, so
     that the features fail as SCLIP's do;
   - ``label_blur`` (the earlier model, kept for regression, :func:`degrade`): the fractions mix the unit class
     embeddings, plus Gaussian noise of norm about ``noise_std``.
5. **Scale**: everything is multiplied by ``token_norm``. CLIP's embeddings are not unit vectors (the raw and the
   normalised ViT-L/14@336 image embedding printed in rom1504/clip-retrieval#290 differ by a factor of about 21),
   and the scale matters where a method adds something of fixed size to the tokens: Laser's adapter adds a
   positional code of norm 16 (LASER.md §4.1).

That is :class:`OracleTeacher` (Laser's token grids). :class:`OraclePixelPyramid` (3D-OVS) and
:class:`OracleScalePyramid` (LERF) imitate the crop pyramids of global CLIP embeddings instead, with the crop
geometry of :mod:`laser.language.teachers.pyramid`:
a crop's embedding is the class text embeddings mixed by the shares of the crop's pixels of each class in the
confused class map (:func:`crop_class_shares`), then the noise model's crop form; no patch averaging or blur (a
global embedding has no patches). The pyramids, noise included, are drawn once in ``prepare``.

Outputs are NOT normalised, like CLIP's. Unlabelled pixels (-1) contribute no class signal.

The ``dense_clip`` defaults are calibrated so that its own 2D argmax mIoU on the default synthetic scene, with the
tiny CLIP's text embeddings, falls in SCLIP's published range (``experiments/RESULTS.md``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from laser.data.scene import Scene
from laser.data.patches import PatchBatch
from laser.errors import ConfigError, DataError
from laser.language.teachers.base import TokenTeacher
from laser.language.teachers.clip_like import ClipLikeFeatures
from laser.language.teachers.pyramid import Box, CropEmbedder, PixelPyramid, PyramidTeacher, ScalePyramid


def most_similar_other(text_embeddings: Tensor) -> Tensor:
    """``[C]`` index of the other class whose text embedding is most cosine-similar; itself when C = 1."""
    unit = F.normalize(text_embeddings, dim=-1)
    similarity = unit @ unit.T
    if similarity.shape[0] > 1:
        similarity.fill_diagonal_(-math.inf)
    return similarity.argmax(dim=-1)


def draw_confusion(
    labels: Tensor,
    text_embeddings: Tensor,
    object_share: float,
    object_view_prob: float,
    view_share: float,
    region_size: int,
    generator: torch.Generator,
) -> Tensor:
    """The class map each view's features will be built from: ``labels`` with confused regions relabelled.

    Args:
        labels: ``[N, H, W]`` long ground-truth classes, -1 unlabelled.
        text_embeddings: ``[C, D]``; a confused region takes the class of :func:`most_similar_other`.
        object_share: share of the objects (classes) confused consistently: ``round(share * C)`` objects are drawn
            once, and each is confused in a view with probability ``object_view_prob``.
        object_view_prob: probability that a consistently confused object is confused in a given view.
        view_share: probability that a (view, object, grid cell) region is confused, drawn independently.
        region_size: side in pixels of the grid cells that cut objects into regions.
        generator: CPU random generator: the same seed gives the same confusion.

    Returns:
        ``[N, H, W]`` long.
    """
    views, height, width = labels.shape
    classes = text_embeddings.shape[0]
    target = most_similar_other(text_embeddings).to(labels.device)
    chosen = torch.randperm(classes, generator=generator)[: round(object_share * classes)]
    object_confused = torch.zeros(views, classes, dtype=torch.bool)
    object_confused[:, chosen] = torch.rand(views, len(chosen), generator=generator) < object_view_prob

    cell_rows, cell_cols = math.ceil(height / region_size), math.ceil(width / region_size)
    region_confused = torch.rand(views, classes, cell_rows, cell_cols, generator=generator) < view_share
    rows = (torch.arange(height) // region_size)[:, None].expand(height, width)
    cols = (torch.arange(width) // region_size)[None, :].expand(height, width)

    safe = labels.clamp(min=0).cpu()
    view_index = torch.arange(views)[:, None, None]
    confused = object_confused[view_index, safe] | region_confused[view_index, safe, rows, cols]
    confused = confused.to(labels.device) & (labels >= 0)
    return torch.where(confused, target[labels.clamp(min=0)], labels)


def _gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[B, K, h, w]`` maps, sigma in grid cells, edges replicated."""
    radius = max(1, math.ceil(2 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    batch, channels, height, width = maps.shape
    flat = maps.reshape(batch * channels, 1, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return flat.reshape(batch, channels, height, width)


def token_fractions(class_map: Tensor, classes: int, patch_size: int = 16, blur_sigma: float = 1.0) -> Tensor:
    """Each token's class fractions: ``[B, C, ceil(H/p), ceil(W/p)]``, patch-averaged then blurred on the token grid.

    Args:
        class_map: ``[B, H, W]`` long class indices (-1 counts for no class). H, W need not be multiples of the
            patch: the last row/column of tokens then averages the pixels it has (padding counts as unlabelled).
        classes: C.
        patch_size: token size in pixels (16 for ViT-B/16).
        blur_sigma: Gaussian sigma on the token grid, in tokens; 0 disables the blur.
    """
    height, width = class_map.shape[1:]
    rows, cols = math.ceil(height / patch_size), math.ceil(width / patch_size)
    padded = F.pad(class_map, (0, cols * patch_size - width, 0, rows * patch_size - height), value=-1)
    # Class fractions per token (C is small), not per-pixel D-dim embeddings.
    one_hot = (padded[:, None] == torch.arange(classes, device=class_map.device)[None, :, None, None]).float()
    fractions = F.avg_pool2d(one_hot, patch_size)
    return _gaussian_blur(fractions, blur_sigma) if blur_sigma > 0 else fractions


def degrade(
    class_map: Tensor,
    text_embeddings: Tensor,
    patch_size: int = 16,
    blur_sigma: float = 1.0,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The ``label_blur`` token model: patch-averaged, blurred and noisy class text embeddings,
    ``[B, ceil(H/p), ceil(W/p), D]`` float, not normalised.

    Args:
        class_map, patch_size, blur_sigma: :func:`token_fractions`'s.
        text_embeddings: ``[C, D]`` unit class embeddings.
        noise_std: expected norm of the Gaussian noise added to each token; 0 disables it.
        generator: random generator for the noise (:func:`add_noise`).
    """
    fractions = token_fractions(class_map, text_embeddings.shape[0], patch_size, blur_sigma)
    tokens = torch.einsum("bchw,cd->bhwd", fractions, text_embeddings.to(fractions))
    return add_noise(tokens, noise_std, generator)


def add_noise(embeddings: Tensor, noise_std: float, generator: torch.Generator | None = None) -> Tensor:
    """``embeddings`` ``[..., D]`` plus Gaussian noise of expected norm about ``noise_std`` (0: unchanged).

    The noise is drawn on the generator's device (a CPU generator also serves embeddings on the GPU)."""
    if noise_std <= 0:
        return embeddings
    device = generator.device if generator is not None else embeddings.device
    noise = torch.randn(embeddings.shape, generator=generator, device=device, dtype=embeddings.dtype)
    return embeddings + noise.to(embeddings.device) * (noise_std / math.sqrt(embeddings.shape[-1]))


def crop_class_shares(class_map: Tensor, num_classes: int, boxes: list[Box], scale: int = 1) -> Tensor:
    """Share of each class among the pixels of each crop: ``[n, C]``; unlabelled pixels (-1) count in the area only.

    Args:
        class_map: ``[H, W]`` long class indices, -1 unlabelled.
        num_classes: C.
        boxes: ``(top, left, bottom, right)`` crops in pixels of ``class_map`` downsampled ``scale`` times (the
            pyramid's pixels); a box covers ``scale x scale`` class-map pixels per pyramid pixel.
        scale: integer downsampling of the boxes' pixels relative to ``class_map``.
    """
    one_hot = (class_map[None] == torch.arange(num_classes, device=class_map.device)[:, None, None]).float()
    # Summed-area table: any box's class counts in four lookups (exact in fp32 up to 2^24 pixels).
    integral = F.pad(one_hot.cumsum(1).cumsum(2), (1, 0, 1, 0))                      # [C, H+1, W+1]
    top, left, bottom, right = (torch.tensor(boxes, device=class_map.device) * scale).unbind(dim=1)
    counts = integral[:, bottom, right] - integral[:, top, right] - integral[:, bottom, left] + integral[:, top, left]
    return (counts / ((bottom - top) * (right - left)).float()).T


NOISE_MODELS = ("dense_clip", "label_blur")


class OracleLabels:
    """The ground truth an oracle teacher degrades: the scene's labels with confusion drawn once (:meth:`prepare`).

    Args:
        noise_model: ``dense_clip`` (the default: :class:`~laser.language.teachers.clip_like.ClipLikeFeatures`,
            features that fail as SCLIP's do) or ``label_blur`` (the earlier model, kept for regression: unit class
            embeddings, patch-averaged, blurred and noisy).
        object_share, object_view_prob, view_share, region_size: the confusion (:func:`draw_confusion`).
        blur_sigma: the token-grid blur of the dense degradation (:func:`token_fractions`).
        noise_std: ``label_blur`` only: expected norm of the noise on each token or crop embedding, relative to a
            pure one.
        token_norm: norm of a pure ``label_blur`` token or crop embedding before noise, and of a pure ``dense_clip``
            class signal (the last step, a plain scale).
        patch_size: token size in pixels.
        seed: seeds the confusion, the blotches, the noise and (pyramids) the crop jitter.
        clip_like: ``dense_clip`` only: :class:`~laser.language.teachers.clip_like.ClipLikeFeatures`'s arguments.
    """

    def use_labels(self, noise_model: str = "dense_clip", object_share: float = 0.15, object_view_prob: float = 0.8,
                   view_share: float = 0.05, region_size: int = 64, blur_sigma: float = 0.5, noise_std: float = 2.0,
                   token_norm: float = 1.0, patch_size: int = 16, seed: int = 0, **clip_like) -> None:
        if noise_model not in NOISE_MODELS:
            raise ConfigError("teacher.noise_model", f"must be one of {NOISE_MODELS}, not {noise_model!r}")
        self.noise_model = noise_model
        self.object_share = object_share
        self.object_view_prob = object_view_prob
        self.view_share = view_share
        self.region_size = region_size
        self.blur_sigma = blur_sigma
        self.noise_std = noise_std
        self.token_norm = token_norm
        self.patch_size = patch_size
        self.seed = seed
        self.clip_like = ClipLikeFeatures(**clip_like)
        self.register_buffer("text_embeddings", torch.empty(0), persistent=False)   # [C, D]
        self.register_buffer("class_maps", torch.empty(0, dtype=torch.long), persistent=False)  # [N, H, W]
        self._noise = torch.Generator()

    def draw(self, scene: Scene, text_embeddings: Tensor) -> None:
        """Draw the per-scene and per-view confusion of ``scene`` (and the dense-CLIP-like model's global direction
        and blotches), and reset the noise."""
        if scene.labels is None:
            raise DataError(scene.name, "the oracle teacher needs per-pixel labels (a scene folder with labels/)")
        generator = torch.Generator().manual_seed(self.seed)
        self.embed_dim = int(text_embeddings.shape[1])
        self.text_embeddings = text_embeddings.detach().float().cpu()
        self.class_maps = draw_confusion(
            scene.labels.cpu(), self.text_embeddings, self.object_share, self.object_view_prob,
            self.view_share, self.region_size, generator,
        )
        if self.noise_model == "dense_clip":
            self.clip_like.prepare(self.text_embeddings, *self.class_maps.shape, generator)
        self._noise = torch.Generator().manual_seed(self.seed + 1)

    def rng_state(self) -> Tensor:
        return self._noise.get_state()

    def set_rng_state(self, state: Tensor) -> None:
        self._noise.set_state(state)

    def full_image(self, view: int) -> Tensor:
        """Token features of a whole view taken as one crop, the token-grid degradation whatever the oracle:
        ``[ceil(H/16), ceil(W/16), D]``."""
        return self._degrade(self.class_maps[view][None], [view], torch.zeros(1, 2, dtype=torch.long))[0]

    def pixel_scores(self, view: int, mode: str = "bilinear") -> Tensor:
        """The teacher's own 2D class scores of a whole view, ``[H, W, C]``: cosine of :meth:`full_image`'s tokens to
        the class embeddings, upsampled 16x (``mode`` of ``F.interpolate``), the last token row/column's padding cut."""
        tokens = F.normalize(self.full_image(view), dim=-1) @ F.normalize(self.text_embeddings, dim=-1).T
        rows, cols, _ = tokens.shape
        options = {} if mode == "nearest" else {"align_corners": False}
        pixels = F.interpolate(tokens.permute(2, 0, 1)[None], size=(rows * self.patch_size, cols * self.patch_size),
                               mode=mode, **options)[0]
        height, width = self.class_maps.shape[1:]
        return pixels[:, :height, :width].permute(1, 2, 0)

    def _degrade(self, maps: Tensor, views: list[int], top_left: Tensor) -> Tensor:
        """Tokens ``[B, h, w, D]`` of class-map crops ``maps`` ``[B, H, W]`` of ``views`` at ``top_left`` ``[B, 2]``."""
        if self.text_embeddings.numel() == 0:
            raise RuntimeError(f"{type(self).__name__}.prepare(scene, text_embeddings) must run before it is called")
        if self.noise_model == "label_blur":
            tokens = degrade(maps, self.text_embeddings, self.patch_size, self.blur_sigma, self.noise_std, self._noise)
        else:
            fractions = token_fractions(maps, self.text_embeddings.shape[0], self.patch_size, self.blur_sigma)
            tokens = self.clip_like.tokens(fractions, views, top_left, self.patch_size, self._noise)
        return tokens * self.token_norm


class OracleTeacher(OracleLabels, TokenTeacher):
    """Degraded ground-truth token grids (the dense form): a test harness for scenes with ``labels``.

    Each call crops the confused class maps and degrades them with fresh noise. Args: :class:`OracleLabels`'s.
    """

    def __init__(self, **degradation):
        TokenTeacher.__init__(self)
        self.use_labels(**degradation)

    def prepare(self, scene: Scene, text_embeddings: Tensor) -> None:
        self.draw(scene, text_embeddings)

    def forward(self, batch: PatchBatch) -> Tensor:
        """``[B, P/16, P/16, D]`` on the batch's device; ``batch.labels`` is not used (the confused maps are)."""
        size, views = batch.crop_size, batch.views.tolist()
        maps = torch.stack([self.class_maps[v, r : r + size, c : c + size]
                            for v, (r, c) in zip(views, batch.top_left.tolist())])
        return self._degrade(maps, views, batch.top_left.cpu()).to(batch.images.device)


class OracleCrops(OracleLabels):
    """Crops of the confused class maps embedded as the class text embeddings mixed by the crop's class shares, plus
    noise, then scaled: the oracle's crop pyramids, drawn once in :meth:`prepare`."""

    image_downsample: int

    def prepare(self, scene: Scene, text_embeddings: Tensor) -> None:
        self.draw(scene, text_embeddings)
        PyramidTeacher.prepare(self, scene, text_embeddings)

    def crop_embedder(self, scene: Scene, view: int) -> CropEmbedder:
        class_map, text = self.class_maps[view], self.text_embeddings

        def embed(boxes: list[Box]) -> Tensor:
            shares = crop_class_shares(class_map, text.shape[0], boxes, self.image_downsample)
            if self.noise_model == "label_blur":
                return add_noise(shares @ text.to(shares), self.noise_std, self._noise) * self.token_norm
            return self.clip_like.crops(shares, self._noise) * self.token_norm

        return embed


class OraclePixelPyramid(OracleCrops, PixelPyramid):
    """The oracle as 3D-OVS's per-pixel crop pyramid. ``geometry``: :class:`PixelPyramid`'s (its ``seed`` is the
    oracle's); ``degradation``: :class:`OracleLabels`'s."""

    def __init__(self, divisors: tuple[int, ...] = (5, 7, 10), stride_fraction: float = 0.25,
                 jitter_fraction: float = 0.25, image_downsample: int = 1, **degradation):
        PixelPyramid.__init__(self, divisors, stride_fraction, jitter_fraction, image_downsample)
        self.use_labels(**degradation)


class OracleScalePyramid(OracleCrops, ScalePyramid):
    """The oracle as LERF's crop pyramid. ``geometry``: :class:`ScalePyramid`'s; ``degradation``:
    :class:`OracleLabels`'s."""

    def __init__(self, scale_min: float = 0.05, scale_max: float = 0.5, num_layers: int = 7, overlap: float = 0.5,
                 image_downsample: int = 1, **degradation):
        ScalePyramid.__init__(self, scale_min, scale_max, num_layers, overlap, image_downsample)
        self.use_labels(**degradation)
