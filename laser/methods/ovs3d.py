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
similarity, §14.5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laser.data.patches import PatchSampler
from laser.data.scene import Scene
from laser.fields.base import RadianceField
from laser.language.teachers.base import Teacher
from laser.language.text import SceneText
from laser.methods.segmentation import SegmentationStage
from laser.modules.dino_correlation import dino_correlation_loss
from laser.modules.label_volume import LabelVolume, ray_distribution
from laser.modules.relevancy import js_divergence, relevancy_maps
from laser.modules.semantic_head import SemanticHead
from laser.rendering import composite_packed

if TYPE_CHECKING:
    from laser.language.dino import DinoExtractor

DINO_PATCH = 8   # 3D-OVS pools the patch rays 8x8: one ray per token of its DINO ViT-B/8


class OVS3DSegmentation(SegmentationStage):
    """The 3D-OVS stage; learns from a pyramid teacher of form ``ovs3d`` (``maps(view)``: ``[S, D, H', W']``).

    Args (beyond :class:`SegmentationStage`'s):
        batch_size: rays per step of the ray branch (4096).
        clip_input: share of the training views whose pyramids supervise the ray branch (0.5).
        patch_size, patch_num: crops of the DINO patch branch (256 px, 8), at the patch scene's resolution.
        temperature: τ of the patch branch's class distributions (0.2).
        relevancy_weight: w_rel (1; 0.1 on office_desk).
        dino_pos_weight, dino_neg_weight, dino_shift: w_pos (200), w_neg (0.18-0.35 by scene) and the cosine
            similarity that splits DINO pairs (0.7).
        use_dino: run the patch branch when DINO weights are found (:func:`laser.language.dino.load_dino`).
        dino_weights: a local DINO state dict; None: the cache of ``dino_model``.
        dino_model: the timm DINO model whose cache is searched (3D-OVS: ViT-B/8).
        selector_components: VM components of the scale selector (the density's, 16, 4, 4).
        lr, lr_selector_grid: semantic head and selector basis; selector planes and lines.
    """

    name = "ovs3d"
    teacher_form = "ovs3d"

    def __init__(self, scene: Scene, eval_scene: Scene, field: RadianceField, teacher: Teacher, text: SceneText,
                 device: str | torch.device = "cpu", n_iters: int = 15000, batch_size: int = 4096,
                 clip_input: float = 0.5, patch_size: int = 256, patch_num: int = 8, chunk: int = 4096,
                 n_samples: int = 482, distance_scale: float = 25.0, weight_threshold: float = 1e-4,
                 joint_start_iter: int = 5000, temperature: float = 0.2, relevancy_weight: float = 1.0,
                 dino_pos_weight: float = 200.0, dino_neg_weight: float = 0.2, dino_shift: float = 0.7,
                 use_dino: bool = True, dino_weights: str | None = None,
                 dino_model: str = "vit_base_patch8_224.dino",
                 selector_components: tuple[int, int, int] = (16, 4, 4), lr: float = 1e-4,
                 lr_selector_grid: float = 0.02, lr_app_grid: float = 5e-3, lr_app_network: float = 5e-5,
                 lr_decay_ratio: float = 0.1, seed: int = 20230417):
        if batch_size <= 0 or not 0 < clip_input <= 1:
            raise ValueError(f"3D-OVS needs batch_size > 0 and 0 < clip_input <= 1, got batch_size={batch_size}, "
                             f"clip_input={clip_input}")
        super().__init__(scene, eval_scene, field, teacher, text, device, n_iters, chunk, n_samples, distance_scale,
                         weight_threshold, joint_start_iter, lr_app_grid, lr_app_network, lr_decay_ratio, seed)
        self.batch_size, self.temperature, self.dino_shift = batch_size, temperature, dino_shift
        self.loss_weights = {"rgb_mse": 1.0, "feature": 1.0, "relevancy": relevancy_weight,
                             "dino_pos": dino_pos_weight, "dino_neg": dino_neg_weight}
        self.lr, self.lr_selector_grid = lr, lr_selector_grid
        self.sampler = PatchSampler(scene, patch_size, patch_num, DINO_PATCH, seed=seed)
        self.dino: DinoExtractor | None = None
        self.dino_weights, self.dino_model = dino_weights, dino_model
        self._dino_pending = use_dino   # loaded at the first step: evaluation never needs it

        # One generator for the view choice, then the ray positions: both replay from the checkpointed state.
        self.ray_generator = torch.Generator().manual_seed(seed)
        train_views = list(scene.train_views)
        count = max(1, round(clip_input * len(train_views)))
        chosen = torch.randperm(len(train_views), generator=self.ray_generator)[:count]
        self.clip_views = sorted(train_views[i] for i in chosen.tolist())
        # Rays of the chosen views once, so that a step's rays are a gather.
        self.view_rays = torch.stack([scene.rays(v).reshape(scene.height, scene.width, 6) for v in self.clip_views])
        with torch.no_grad():
            self.relevancy = torch.stack([relevancy_maps(teacher.maps(v).to(self.device).float(), self.text)
                                          for v in self.clip_views])            # [V, S, C, H', W']

        self.head = SemanticHead(in_dim=field.app_dim, out_dim=self.text.shape[1], activation=None).to(self.device)
        self.selector = LabelVolume(field.grid_resolution(), selector_components,
                                    num_slots=self.relevancy.shape[1]).to(self.device)
        self.reset_optimizer()

    def modules(self) -> dict[str, nn.Module]:
        return {"head": self.head, "selector": self.selector}

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.head.parameters()), "lr": self.lr},
                {"params": list(self.selector.grid.parameters()), "lr": self.lr_selector_grid},
                {"params": list(self.selector.basis.parameters()), "lr": self.lr}]

    def extra_state(self) -> dict:
        return {"ray_generator": self.ray_generator.get_state(), "sampler": self.sampler.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.ray_generator.set_state(state["ray_generator"])
        self.sampler.load_state_dict(state["sampler"])

    # --- rendering -----------------------------------------------------------------------------------------------
    def render(self, rays: Tensor, train: bool = False) -> dict[str, Tensor]:
        """Semantic features ``[R, D]`` and colour ``[R, 3]`` of rays ``[R, 6]``; in training also the scale
        distributions ``[R, S]`` (only the losses read the selector: queries use ``f`` alone, §14.5)."""
        samples = self.shaded_samples(rays, train)
        weights, shaded = samples["weights"], samples["shaded"]
        xyz = samples["points"][shaded]
        app = self.field.app_features(xyz)
        out = {"features": composite_packed(weights, self.head(app), shaded),
               "rgb": composite_packed(weights, self.field.color(app, samples["viewdirs"][shaded]), shaded)}
        if train:
            out["scales"] = ray_distribution(self.selector(self.field.normalize(xyz)), weights, shaded)
        return out

    # --- training ------------------------------------------------------------------------------------------------
    def sample_rays(self) -> dict[str, Tensor]:
        """``batch_size`` random pixels of the ``clip_input`` views: ``rays`` ``[N, 6]``, ``rgb`` ``[N, 3]``,
        pyramid embeddings ``targets`` ``[N, S, D]`` (L2-normalised per scale) and ``relevancy`` ``[N, S, C]``."""
        n, generator = self.batch_size, self.ray_generator
        slot = torch.randint(len(self.clip_views), (n,), generator=generator)
        row = torch.randint(self.scene.height, (n,), generator=generator)
        col = torch.randint(self.scene.width, (n,), generator=generator)
        # The pyramid may be smaller than the images (image_downsample): read the pyramid pixel under each pixel.
        map_height, map_width = self.relevancy.shape[-2:]
        map_row, map_col = row * map_height // self.scene.height, col * map_width // self.scene.width
        scales, dim = self.relevancy.shape[1], self.text.shape[1]
        targets = torch.empty(n, scales, dim, device=self.device)
        for index, view in enumerate(self.clip_views):
            hit = (slot == index).nonzero()[:, 0]
            maps = self.teacher.maps(view)
            picked = maps[:, :, map_row[hit].to(maps.device), map_col[hit].to(maps.device)]      # [S, D, n_v]
            targets[hit.to(self.device)] = picked.permute(2, 0, 1).to(self.device, torch.float32)
        slot_d, map_row_d, map_col_d = slot.to(self.device), map_row.to(self.device), map_col.to(self.device)
        return {"rays": self.view_rays[slot, row, col].to(self.device),
                "rgb": self.scene.images[torch.tensor(self.clip_views)[slot], row, col].to(self.device),
                "targets": F.normalize(targets, dim=-1),
                "relevancy": self.relevancy[slot_d, :, :, map_row_d, map_col_d]}

    def dino_extractor(self) -> DinoExtractor | None:
        """The DINO extractor of the patch branch, loaded once on first use; None without weights."""
        if self._dino_pending:
            self._dino_pending = False
            from laser.language.dino import load_dino  # timm is imported only by runs that use DINO

            dino = load_dino(self.dino_weights, self.dino_model)
            if dino is not None and dino.patch_size != DINO_PATCH:
                raise ValueError(f"3D-OVS pools its patch rays {DINO_PATCH}x{DINO_PATCH}, one per DINO ViT-B/8 token; "
                                 f"the DINO weights have {dino.patch_size}-px patches (choose a /8 model)")
            self.dino = dino.to(self.device) if dino is not None else None
        return self.dino

    def correlation_losses(self, dino: DinoExtractor) -> tuple[Tensor, Tensor]:
        """``(L_pos, L_neg)`` of one batch of crops (the patch branch, §14.4 b)."""
        sample = self.sampler.sample()
        crops, g, _ = sample.grid
        with torch.no_grad():
            tokens = dino(sample.batch.images.to(self.device)).float().reshape(crops, g * g, -1)
        features = self.render(sample.rays.to(self.device), train=True)["features"]
        log_probs = torch.log_softmax(F.normalize(features, dim=-1) @ self.text.T / self.temperature, dim=-1)
        return dino_correlation_loss(tokens, log_probs.reshape(crops, g * g, -1), self.dino_shift)

    def train_step(self, step: int) -> dict[str, float]:
        self.begin_step(step)
        batch = self.sample_rays()
        out = self.render(batch["rays"], train=True)
        f, pi = out["features"], out["scales"][..., None]                                   # [N, D], [N, S, 1]
        selected = F.normalize((pi * batch["targets"]).sum(dim=1), dim=-1)
        losses = {"rgb_mse": F.mse_loss(out["rgb"], batch["rgb"]),
                  "feature": -F.cosine_similarity(f, selected, dim=-1).mean(),
                  "relevancy": js_divergence(torch.log_softmax(f @ self.text.T, dim=-1),
                                             torch.log_softmax((pi * batch["relevancy"]).sum(dim=1), dim=-1)).mean()}
        dino = self.dino_extractor()
        if dino is not None:
            losses["dino_pos"], losses["dino_neg"] = self.correlation_losses(dino)
        loss = sum(self.loss_weights[k] * v for k, v in losses.items())
        self.apply_gradients(loss)
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}
