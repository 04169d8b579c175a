"""3D-OVS's stage 2 (Liu et al., NeurIPS 2023; LASER.md §14.3-14.4): distil a multi-scale CLIP crop pyramid into the
frozen-density radiance field, each ray choosing its scale.

Field: a purely linear semantic head on the appearance features gives the NeRF feature ``f`` of a ray; a
3-slot label volume, composited along the ray and soft-maxed, is the ray's distribution ``π`` over the pyramid's
scales (the selector). Per step:

* **ray branch**: ``batch_size`` random pixels of ``clip_input`` (a random share, drawn once) of the training
  views. Targets are the pyramid embeddings ``F_s`` at the pixel (L2-normalised per scale) and the relevancy
  maps ``R_s`` (:func:`~laser.modules.relevancy.relevancy_maps`, computed once). ``L_feat = -cos(f,
  normalize(Σ π_s F_s))``; ``L_rel = JS(log_softmax_C(f Tᵀ), log_softmax_C(Σ π_s R_s))`` with the unnormalised
  ``f``, as the official code does (§14.4 a); ``L_rgb`` is the colour MSE of the same rays, which trains the
  appearance once the base switches it on at ``joint_start_iter``.
* **patch branch** (only with a DINO extractor): ``patch_num`` random ``patch_size`` crops, one ray per 8x8 block
  (a DINO ViT-B/8 token); :func:`~laser.modules.dino_correlation.dino_correlation_loss` on the tokens' class
  distributions ``log_softmax_C(normalize(f) Tᵀ / τ)``.

``L = L_rgb + L_feat + w_rel L_rel + w_pos L_pos + w_neg L_neg``. Evaluation is the base's (argmax of the cosine
similarity, §14.5). The parts, the supervision and the loss map come from ``conf/model/ovs3d.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laser.methods.segmentation import SegmentationStage
from laser.modules.dino_correlation import dino_correlation_loss
from laser.modules.label_volume import LabelVolume
from laser.modules.relevancy import js_divergence
from laser.modules.semantic_head import SemanticHead
from laser.rendering import composite_affine, composite_packed


class OVS3DSegmentation(SegmentationStage):
    """The 3D-OVS stage; learns from a per-pixel crop pyramid through
    :class:`~laser.methods.supervision.PixelPyramidRays`. Loss terms ``rgb_mse``, ``feature``, ``relevancy``,
    ``dino_pos`` and ``dino_neg``.

    Args (beyond :class:`~laser.methods.segmentation.SegmentationStage`'s):
        head: partial of the semantic head (3D-OVS: linear), completed with the field's and the text's sizes.
        selector: partial of the scale selector's volume (the density's VM ranks), completed with one slot per
            pyramid scale.
        temperature: τ of the patch branch's class distributions (0.2).
        dino_shift: the DINO cosine similarity that splits similar from dissimilar pairs (0.7).
        lr, lr_selector_grid: semantic head and selector basis; selector planes and lines.
    """

    name = "ovs3d"
    loss_names = ("rgb_mse", "feature", "relevancy", "dino_pos", "dino_neg")

    def __init__(self, *, head: Callable[..., SemanticHead], selector: Callable[..., LabelVolume],
                 temperature: float = 0.2, dino_shift: float = 0.7, lr: float = 1e-4, lr_selector_grid: float = 0.02,
                 **stage):
        super().__init__(**stage)
        self.temperature, self.dino_shift = temperature, dino_shift
        self.lr, self.lr_selector_grid = lr, lr_selector_grid
        self.head = head(in_dim=self.field.app_dim, out_dim=self.text.shape[1]).to(self.device)
        self.selector = selector(resolution=self.field.grid_resolution(),
                                 num_slots=self.supervision.scales).to(self.device)
        self.reset_optimizer()

    def modules(self) -> dict[str, nn.Module]:
        return {"head": self.head, "selector": self.selector}

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.head.parameters()), "lr": self.lr},
                {"params": list(self.selector.grid.parameters()), "lr": self.lr_selector_grid},
                {"params": list(self.selector.basis.parameters()), "lr": self.lr}]

    # --- rendering -----------------------------------------------------------------------------------------------
    def render(self, rays: Tensor, train: bool = False) -> dict[str, Tensor]:
        """Semantic features ``[R, D]`` and colour ``[R, 3]`` of rays ``[R, 6]``; in training also the scale
        distributions ``[R, S]`` (only the losses read the selector: queries use ``f`` alone, §14.5)."""
        samples = self.shaded_samples(rays, train)
        weights, shaded = samples["weights"], samples["shaded"]
        xyz = samples["points"][shaded]
        app = self.field.app_features(xyz)
        # An affine head (3D-OVS's) maps each ray's composited appearance instead of every point's.
        features = (composite_affine(weights, app, shaded, self.head) if self.head.affine
                    else composite_packed(weights, self.head(app), shaded))
        out = {"features": features,
               "rgb": composite_packed(weights, self.field.color(app, samples["viewdirs"][shaded]), shaded)}
        if train:
            out["scales"] = self.selector.ray_distribution(self.field.normalize(xyz), weights, shaded)
        return out

    # --- training ------------------------------------------------------------------------------------------------
    def outputs(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        """The ray branch's render; with the patch branch also the patch rays' class log-probabilities
        ``patch_log_probs`` ``[B, g g, C]``."""
        out = self.render(batch["rays"], train=True)
        if "patch_rays" in batch:
            crops, g, _ = batch["patch_grid"]
            features = self.render(batch["patch_rays"], train=True)["features"]
            log_probs = torch.log_softmax(F.normalize(features, dim=-1) @ self.text.T / self.temperature, dim=-1)
            out["patch_log_probs"] = log_probs.reshape(crops, g * g, -1)
        return out

    def losses(self, batch: dict[str, Any], out: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        on = self.loss_weights
        f, pi = out["features"], out["scales"][..., None]                                   # [N, D], [N, S, 1]
        terms = {}
        if "rgb_mse" in on:
            terms["rgb_mse"] = F.mse_loss(out["rgb"], batch["rgb"])
        if "feature" in on:
            selected = F.normalize((pi * batch["targets"]).sum(dim=1), dim=-1)
            terms["feature"] = -F.cosine_similarity(f, selected, dim=-1).mean()
        if "relevancy" in on:
            terms["relevancy"] = js_divergence(torch.log_softmax(f @ self.text.T, dim=-1),
                                               torch.log_softmax((pi * batch["relevancy"]).sum(dim=1), dim=-1)).mean()
        if "patch_log_probs" in out and ("dino_pos" in on or "dino_neg" in on):
            positive, negative = dino_correlation_loss(batch["dino_tokens"], out["patch_log_probs"], self.dino_shift)
            terms |= {k: v for k, v in (("dino_pos", positive), ("dino_neg", negative)) if k in on}
        return terms
