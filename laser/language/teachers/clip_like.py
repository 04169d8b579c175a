"""The oracle's dense-CLIP-like feature model: how label-made token features are made to fail as SCLIP's do.

A TEST HARNESS part (:mod:`laser.language.teachers.oracle` uses it), not a method. The oracle's class maps (the
labels with their consistent confusion drawn) become tokens with the properties that make dense CLIP features hard
to distil, each a config value of :class:`ClipLikeFeatures` with the figure behind its default:

1. **Far from the text.** A token is mostly an image-global component shared by every token of its crop, of norm
   ``global_norm`` against the token's own class signal (norm 1), orthogonal to the class text embeddings (the
   modality gap: CLIP's image and text embeddings sit in separate cones). At ``global_norm = 4`` a pure token has
   cosine about ``1 / sqrt(1 + 16) = 0.24`` to its class text (a little more with its crop's context) and ``0.24
   rho`` to a class whose text has cosine ``rho`` to it, so the right class leads the most similar wrong one by a
   few hundredths, as in CLIP, whose matched image-text
   cosines are about 0.3 (CLIPScore, Hessel et al. 2021, rescale them by 2.5 for that reason) and whose zero-shot
   logits are those cosines times 100. Tokens of different objects in one crop are then alike (cosine about 0.9).
2. **Context dependence.** The global component has a scene direction plus a fresh random one per crop
   (``global_jitter``) and the crop's own class mixture (``context_weight`` times the class shares of the crop),
   so a point's feature changes with what else its crop holds (SCLIP, ClearCLIP: dense CLIP features are dominated
   by the image-global residual stream). Averaging over crops removes the random part.
3. **Spatially coherent errors.** Per view, a smooth random field per class (Gaussian-filtered white noise of scale
   ``blotch_scale`` pixels, standard deviation ``blotch_std`` in class-signal units) is added to the token's class
   weights: blotches of a wrong class a few tokens across, the same in every crop of a view, independent between
   views (MaskCLIP's and SCLIP's maps show such blotches; a 3D field averages views and so removes them).
4. **Artifact tokens.** ``artifact_share`` of a crop's tokens, drawn in low-information regions (tokens whose 3 x 3
   neighbourhood holds one class only), are replaced by the crop's global component alone, at ``artifact_norm``
   times the crop's mean token norm ("Vision Transformers Need Registers", Darcet et al. 2024: about 2 % of the
   tokens of large ViTs, with norms about 10x the others', in redundant background patches).
5. **Little independent noise**: Gaussian of norm ``token_noise`` per token (against a class signal of norm 1).

The consistent per-object confusion, the patch averaging and the boundary blur are the oracle's own
(:func:`~laser.language.teachers.oracle.draw_confusion`, :func:`~laser.language.teachers.oracle.degrade`).
Crop embeddings of the pyramids (3D-OVS, LERF: global CLIP embeddings of crops) get properties 1, 2 and 5: the
class shares of the crop plus the global component plus noise.

Calibration (frozen before any stage-2 run, ``experiments/RESULTS.md``): the teacher's own 2D mIoU on the default
synthetic scene falls in SCLIP's published range with ViT-B/16 (33.5 % on COCO-Object to 59.6 % on VOC).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

FIELD_CELL = 8  # pixels per cell of the stored blotch fields; they vary over tens of pixels


def orthogonal_to(text_embeddings: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """``[count, D]`` random unit vectors orthogonal to the span of ``text_embeddings`` ``[C, D]`` (C < D)."""
    basis, _ = torch.linalg.qr(text_embeddings.T.double())                             # [D, C]
    vectors = torch.randn(count, text_embeddings.shape[1], generator=generator, dtype=torch.float64)
    vectors = vectors - (vectors @ basis) @ basis.T
    return F.normalize(vectors, dim=-1).to(text_embeddings.dtype)


def blotch_fields(views: int, classes: int, height: int, width: int, scale: float,
                  generator: torch.Generator) -> Tensor:
    """Unit-variance smooth random fields, one per (view, class): ``[V, C, h, w]`` on cells of ``FIELD_CELL`` px.

    White noise filtered by a Gaussian of sigma ``scale`` pixels, then scaled to unit standard deviation (per field).
    """
    rows, cols = math.ceil(height / FIELD_CELL) + 1, math.ceil(width / FIELD_CELL) + 1
    sigma = scale / FIELD_CELL
    radius = max(1, math.ceil(3 * sigma))
    noise = torch.randn(views * classes, 1, rows + 2 * radius, cols + 2 * radius, generator=generator)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    smooth = F.conv2d(F.conv2d(noise, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))    # [V*C, 1, rows, cols]
    smooth = smooth / smooth.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    return smooth.reshape(views, classes, rows, cols)


def sample_fields(fields: Tensor, centres: Tensor) -> Tensor:
    """Bilinear values of one view's fields ``[C, h, w]`` at pixel positions ``centres`` ``[..., 2]`` (row, col):
    ``[..., C]``."""
    rows, cols = fields.shape[1:]
    # Cell k covers pixels [8k, 8k + 8): its value sits at pixel 8k + 3.5 (pixel centres are at +0.5).
    x = (centres[..., 1] - (FIELD_CELL / 2 - 0.5)) / FIELD_CELL / (cols - 1) * 2 - 1
    y = (centres[..., 0] - (FIELD_CELL / 2 - 0.5)) / FIELD_CELL / (rows - 1) * 2 - 1
    grid = torch.stack([x, y], dim=-1).reshape(1, -1, 1, 2).to(fields)
    values = F.grid_sample(fields[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return values[0, :, :, 0].T.reshape(*centres.shape[:-1], fields.shape[0])


class ClipLikeFeatures:
    """The dense-CLIP-like part of the oracle's features (module docstring). Per scene: :meth:`prepare`; then
    :meth:`tokens` for token grids and :meth:`crops` for pyramid crop embeddings.

    Args:
        global_norm: norm of the image-global component, in units of a pure token's class signal.
        global_jitter: weight of the per-crop random direction against the scene's global direction (both unit).
        context_weight: weight of the crop's class mixture added to every token of the crop.
        blotch_std: standard deviation of the per-view class fields added to the tokens' class weights.
        blotch_scale: Gaussian sigma of those fields, pixels.
        artifact_share: share of a crop's tokens that are artifact tokens, drawn among the tokens of one-class 3 x 3
            neighbourhoods (all of those when there are fewer).
        artifact_norm: an artifact token's norm, in units of the crop's mean token norm.
        token_noise: norm of the independent Gaussian noise on each token or crop embedding.
    """

    def __init__(self, global_norm: float = 4.0, global_jitter: float = 0.5, context_weight: float = 0.3,
                 blotch_std: float = 0.17, blotch_scale: float = 24.0, artifact_share: float = 0.02,
                 artifact_norm: float = 10.0, token_noise: float = 0.3):
        self.global_norm, self.global_jitter, self.context_weight = global_norm, global_jitter, context_weight
        self.blotch_std, self.blotch_scale = blotch_std, blotch_scale
        self.artifact_share, self.artifact_norm, self.token_noise = artifact_share, artifact_norm, token_noise

    def prepare(self, text_embeddings: Tensor, views: int, height: int, width: int,
                generator: torch.Generator) -> None:
        """Draw the scene's global direction and every view's blotch fields (``text_embeddings`` ``[C, D]``)."""
        self.text = text_embeddings
        self.scene_direction = orthogonal_to(text_embeddings, 1, generator)[0]                 # [D]
        self.fields = blotch_fields(views, text_embeddings.shape[0], height, width, self.blotch_scale, generator)

    def global_component(self, shares: Tensor, generator: torch.Generator) -> Tensor:
        """``[B, D]``: each crop's image-global component from its class shares ``[B, C]``, with a fresh random
        direction per crop."""
        jitter = orthogonal_to(self.text, shares.shape[0], generator)                          # [B, D]
        direction = F.normalize(self.scene_direction + self.global_jitter * jitter, dim=-1)
        return self.global_norm * direction + self.context_weight * shares @ self.text

    def tokens(self, fractions: Tensor, views: list[int], top_left: Tensor, patch_size: int,
               generator: torch.Generator) -> Tensor:
        """Token features ``[B, h, w, D]`` from the class fractions of each token ``[B, C, h, w]`` (patch-averaged,
        blurred class maps) of crops of ``views`` whose first pixel is ``top_left`` ``[B, 2]`` (row, col)."""
        batch, classes, rows, cols = fractions.shape
        grid = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), dim=-1)
        centres = top_left[:, None, None, :].float() + grid[None] * patch_size + (patch_size - 1) / 2   # [B,h,w,2]
        blotches = torch.stack([sample_fields(self.fields[v], centres[b]) for b, v in enumerate(views)])
        labelled = fractions.sum(dim=1)                                                         # [B, h, w]
        weights = fractions.permute(0, 2, 3, 1) + self.blotch_std * blotches * labelled[..., None]
        signal = weights @ self.text                                                            # [B, h, w, D]

        shares = fractions.mean(dim=(2, 3))                                                     # [B, C]
        common = self.global_component(shares, generator)                                       # [B, D]
        tokens = signal + common[:, None, None] + self._noise(signal.shape, generator)

        # Artifacts: tokens inside one-class neighbourhoods (low information) replaced by the global component.
        candidate = (-F.max_pool2d(-fractions, 3, 1, 1)).amax(dim=1) > 0.999                  # [B, h, w]
        # Each crop's artifacts are artifact_share of its tokens where it has enough candidates.
        odds = (self.artifact_share * rows * cols / candidate.sum(dim=(1, 2)).clamp(min=1)).clamp(max=1)
        chosen = candidate & (torch.rand(candidate.shape, generator=generator) < odds[:, None, None])
        mean_norm = tokens.norm(dim=-1).mean(dim=(1, 2))                                        # [B]
        artifact = F.normalize(common, dim=-1) * (self.artifact_norm * mean_norm)[:, None]      # [B, D]
        return torch.where(chosen[..., None], artifact[:, None, None], tokens)

    def crops(self, shares: Tensor, generator: torch.Generator) -> Tensor:
        """Crop embeddings ``[n, D]`` from the crops' class shares ``[n, C]``."""
        signal = shares @ self.text
        return signal + self.global_component(shares, generator) + self._noise(signal.shape, generator)

    def _noise(self, shape: torch.Size, generator: torch.Generator) -> Tensor:
        if self.token_noise <= 0:
            return torch.zeros(shape)
        return torch.randn(shape, generator=generator) * (self.token_noise / math.sqrt(shape[-1]))
