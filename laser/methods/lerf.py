"""LERF (Kerr et al., ICCV 2023; LASER.md §14.6) as a stage-2 method: a language field over the frozen radiance
field, supervised by multi-scale crop pyramids of CLIP embeddings, queried by relevancy.

Training step: ``batch_size`` rays uniformly over the training views (a random view, then a random pixel); per ray
an image-plane scale ``s_img ~ U(scale_min, scale_max)`` (fractions of the image height: the teacher pyramid's
range). The target is the teacher's trilinear pyramid embedding at that pixel and scale. Every shaded sample gets
the world-space size of that crop at its distance from the camera (:mod:`laser.modules.frustum_scale`); ``F_lang``
is composited with the frozen field's weights and L2-normalised; the loss is ``1 - cos``. With DINO weights,
``F_dino`` is composited too and regressed on the DINO patch features at the pixel (squared error summed over
channels, as LERF). Density and colour stay frozen: LERF's language gradients never reach the radiance field, so
there is no joint fine-tuning (its phase would start at ``n_iters``, which never comes).

Query (:meth:`LerfSegmentation.class_scores`): the language field is rendered at ``query_scales`` world scales evenly
spaced over ``[0, query_scale_max]`` (scene units; see :mod:`laser.modules.frustum_scale` for what a unit is on
forward-facing scenes), after discarding the samples seen by fewer than ``min_views`` training views. Each class's
relevancy is computed against the canonical phrases at every scale; per view and class the scale whose map peaks
highest is kept, and each pixel takes the class of highest relevancy (the 3D-OVS protocol).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laser.data.scene import Scene
from laser.fields.base import RadianceField
from laser.fields.hashgrid import Backend
from laser.language.dino import DEFAULT_MODEL, DinoExtractor, load_dino
from laser.language.teachers.base import Teacher
from laser.language.text import SceneText
from laser.methods.segmentation import SegmentationStage
from laser.modules.frustum_scale import sample_scales
from laser.modules.language_field import LanguageField
from laser.modules.relevancy_query import relevancy, select_scale, visible_views
from laser.rendering import composite_packed, render_in_chunks


class LerfSegmentation(SegmentationStage):
    """The LERF stage. ``backbone``: ``hashgrid`` (LERF's own hash grid) or ``appearance`` (the radiance field's
    appearance features); the hash-grid and MLP sizes are LERF's by default (:mod:`laser.modules.language_field`)."""

    name = "lerf"
    teacher_form = "lerf"

    def __init__(self, scene: Scene, eval_scene: Scene, field: RadianceField, teacher: Teacher, text: SceneText,
                 device: str | torch.device = "cpu", n_iters: int = 30000, batch_size: int = 4096, chunk: int = 4096,
                 n_samples: int = 482, distance_scale: float = 25.0, weight_threshold: float = 1e-4,
                 scale_min: float = 0.05, scale_max: float = 0.5, pyramid_downsample: int = 1,
                 backbone: str = "hashgrid", backend: Backend = "auto", n_levels: int = 24,
                 features_per_level: int = 8, log2_hashmap_size: int = 19, base_resolution: int = 16,
                 max_resolution: int = 512, hidden_dim: int = 256, n_hidden: int = 4, dino_hidden_dim: int = 256,
                 dino_n_hidden: int = 1, use_dino: bool = True, dino_weights: str | None = None,
                 dino_model: str = DEFAULT_MODEL, dino_image_size: int = 500, language_weight: float = 1.0,
                 dino_weight: float = 1.0, lr: float = 1e-2, adam_eps: float = 1e-15, lr_decay_ratio: float = 0.1,
                 query_scales: int = 30, query_scale_max: float = 2.0, min_views: int = 5, seed: int = 20230417):
        if not 0 < scale_min <= scale_max:
            raise ValueError(f"LERF's image-plane scales need 0 < scale_min <= scale_max (fractions of the image "
                             f"height), got scale_min={scale_min}, scale_max={scale_max}")
        if batch_size <= 0 or query_scales <= 0 or query_scale_max < 0 or min_views < 0:
            raise ValueError(f"LERF needs batch_size > 0, query_scales > 0, query_scale_max >= 0 and min_views >= 0; "
                             f"got {batch_size}, {query_scales}, {query_scale_max}, {min_views}")
        super().__init__(scene, eval_scene, field, teacher, text, device, n_iters=n_iters, chunk=chunk,
                         n_samples=n_samples, distance_scale=distance_scale, weight_threshold=weight_threshold,
                         joint_start_iter=n_iters, lr_decay_ratio=lr_decay_ratio, seed=seed)
        self.canonical = text.canonical.to(self.device)                  # [4, D]
        self.batch_size, self.scale_range = batch_size, (scale_min, scale_max)
        self.pyramid_downsample = pyramid_downsample                    # teacher image / scene image, per side
        self.loss_weights = {"language": language_weight, "dino": dino_weight}
        self.lr, self.adam_eps = lr, adam_eps
        self.query_scales = torch.linspace(0.0, query_scale_max, query_scales).tolist()
        self.min_views = min_views

        self.views = list(scene.train_views)
        # Rays of every training view once, so that a step's rays are a gather (as Laser's patch sampler).
        self.view_rays = torch.stack([scene.rays(v) for v in self.views])               # [V, H*W, 6]
        self.view_c2w = scene.c2w[self.views].to(self.device)                            # [V, 3, 4]
        self.ray_generator = torch.Generator().manual_seed(seed)

        dino = load_dino(dino_weights, dino_model) if use_dino else None
        # The extractor is needed once: its features of the training views are the targets.
        self.dino_targets = self._dino_features(dino.to(self.device), dino_image_size) if dino else None
        self.language = LanguageField(
            field.aabb, field.app_dim, out_dim=self.text.shape[1], dino_dim=dino.embed_dim if dino else None,
            backbone=backbone, n_levels=n_levels, features_per_level=features_per_level,
            log2_hashmap_size=log2_hashmap_size, base_resolution=base_resolution, max_resolution=max_resolution,
            backend=backend, hidden_dim=hidden_dim, n_hidden=n_hidden, dino_hidden_dim=dino_hidden_dim,
            dino_n_hidden=dino_n_hidden).to(self.device)
        self.reset_optimizer()

    def modules(self) -> dict[str, nn.Module]:
        return {"language_field": self.language}

    def param_groups(self) -> list[dict]:
        # nerfstudio's (and LERF's) Adam epsilon: hash-table entries see tiny, sparse gradients.
        return [{"params": list(self.language.parameters()), "lr": self.lr, "eps": self.adam_eps}]

    # --- checkpoints ---------------------------------------------------------------------------------------------
    def _build(self) -> dict:
        """What shapes the trainable parameters beyond the config: DINO weights found or not, hash backend."""
        return {"dino": self.dino_targets is not None, "encoding_backend": self.language.encoding_backend}

    def extra_state(self) -> dict:
        return {"ray_generator": self.ray_generator.get_state(), "build": self._build()}

    def load_state_dict(self, state: dict) -> None:
        if state["build"] != self._build():
            raise ValueError(f"this LERF checkpoint was trained with {state['build']} but this run has "
                             f"{self._build()}: resume where the DINO weights are found (or not) as they were "
                             f"(model.use_dino, model.dino_weights) and with the same model.backend")
        super().load_state_dict(state)

    def load_extra_state(self, state: dict) -> None:
        self.ray_generator.set_state(state["ray_generator"])

    # --- supervision ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _dino_features(self, dino: DinoExtractor, image_size: int) -> Tensor:
        """DINO patch features ``[V, C, h, w]`` of the training views, each image resized so that its shorter side
        is about ``image_size`` px (LERF: 500) and each side a whole number of patches: the grid covers the image."""
        p, height, width = dino.patch_size, self.scene.height, self.scene.width
        factor = image_size / min(height, width)
        size = (max(1, round(height * factor / p)) * p, max(1, round(width * factor / p)) * p)
        features = []
        for view in self.views:
            image = self.scene.images[view].permute(2, 0, 1)[None].to(self.device)
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
            features.append(dino(image.clamp(0, 1).permute(0, 2, 3, 1))[0].permute(2, 0, 1))
        return torch.stack(features)

    def _sample(self) -> tuple[Tensor, Tensor, Tensor]:
        """One step's rays: training-view slots ``[B]`` (into ``self.views``), pixels ``[B, 2]`` (row, col) and
        image-plane scales ``[B]``, uniform over views, pixels and ``[scale_min, scale_max]``."""
        b, g = self.batch_size, self.ray_generator
        slots = torch.randint(len(self.views), (b,), generator=g)
        pixels = torch.stack([torch.randint(self.scene.height, (b,), generator=g),
                              torch.randint(self.scene.width, (b,), generator=g)], dim=-1)
        low, high = self.scale_range
        return slots, pixels, low + (high - low) * torch.rand(b, generator=g)

    def _targets(self, slots: Tensor, pixels: Tensor, image_scale: Tensor) -> dict[str, Tensor]:
        """Teacher embeddings ``[B, D]`` at the pixels and scales (and DINO features ``[B, C]`` at the pixels)."""
        d = self.pyramid_downsample
        pyramid_rc = (pixels + 0.5) / d - 0.5             # pixel centres at the pyramid's resolution
        # DINO grids cover the image: pixel centres in grid_sample's [-1, 1] (align_corners=False) coordinates.
        size = torch.tensor([self.scene.height, self.scene.width])
        dino_xy = ((pixels + 0.5) / size * 2 - 1).flip(-1).to(self.device)
        language = torch.empty(len(slots), self.text.shape[1], device=self.device)
        dino = None if self.dino_targets is None else torch.empty(len(slots), self.dino_targets.shape[1],
                                                                  device=self.device)
        for slot in slots.unique().tolist():
            rows = (slots == slot).nonzero()[:, 0]
            here = rows.to(self.device)
            language[here] = self.teacher.query(self.views[slot], pyramid_rc[rows], image_scale[rows]).to(
                self.device, torch.float32)
            if dino is not None:
                grid = dino_xy[here][None, None]                                          # [1, 1, n, 2]
                dino[here] = F.grid_sample(self.dino_targets[slot][None], grid, align_corners=False)[0, :, 0].T
        return {"language": language, "dino": dino}

    def render_at_image_scale(self, rays: Tensor, centres: Tensor, image_scale: Tensor) -> dict[str, Tensor]:
        """Training render of rays ``[R, 6]`` from camera centres ``[R, 3]`` (world) for crops of image-plane scale
        ``[R]``: unit ``language`` ``[R, D]`` and, with DINO, ``dino`` ``[R, C]``."""
        samples = self.shaded_samples(rays, train=True)
        weights, shaded = samples["weights"], samples["shaded"]
        ray = shaded.nonzero()[:, 0]
        xyz = samples["points"][shaded]
        features = self.language.backbone(xyz, self.field)
        scale = sample_scales(self.scene, xyz, centres[ray], image_scale[ray])
        out = {"language": F.normalize(composite_packed(weights, self.language.language(features, scale), shaded),
                                       dim=-1)}
        if self.dino_targets is not None:
            out["dino"] = composite_packed(weights, self.language.dino(features), shaded)
        return out

    def train_step(self, step: int) -> dict[str, float]:
        self.begin_step(step)
        slots, pixels, image_scale = self._sample()
        with torch.no_grad():
            targets = self._targets(slots, pixels, image_scale)
        rays = self.view_rays[slots, pixels[:, 0] * self.scene.width + pixels[:, 1]].to(self.device)
        out = self.render_at_image_scale(rays, self.view_c2w[slots.to(self.device), :, 3],
                                         image_scale.to(self.device))
        cos = (out["language"] * F.normalize(targets["language"], dim=-1)).sum(-1)
        losses = {"language": (1 - cos).mean()}
        if self.dino_targets is not None:
            losses["dino"] = (out["dino"] - targets["dino"]).square().sum(-1).mean()
        loss = sum(self.loss_weights[k] * v for k, v in losses.items())
        self.apply_gradients(loss)
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    # --- query ---------------------------------------------------------------------------------------------------
    def render(self, rays: Tensor, train: bool = False) -> dict[str, Tensor]:
        """Colour ``[R, 3]`` and the relevancy ``[R, S, C]`` of every class at each of the ``S`` query scales.

        The language field is evaluated once per scale and reused for all classes. Samples seen by fewer than
        ``min_views`` training views carry no language (their weight is dropped, not redistributed: the rendered
        embedding is normalised anyway). Visibility is computed with the training scene's intrinsics; the NDC warp
        and the projection depend only on ``f / W`` and ``f / H``, so rays of the evaluation scene map the same.
        """
        samples = self.shaded_samples(rays, train)
        weights, shaded = samples["weights"], samples["shaded"]
        xyz = samples["points"][shaded]
        rgb = composite_packed(weights, self.field.color(self.field.app_features(xyz), samples["viewdirs"][shaded]),
                               shaded)
        scene = self.scene
        seen = visible_views(scene.world_points(xyz), self.view_c2w, scene.fx, scene.fy, scene.height,
                             scene.width) >= self.min_views
        kept = shaded.clone()
        kept[shaded] = seen
        features = self.language.backbone(xyz[seen], self.field)
        maps = []
        for scale in self.query_scales:
            language = self.language.language(features, features.new_full((len(features),), scale))
            maps.append(relevancy(F.normalize(composite_packed(weights, language, kept), dim=-1), self.text,
                                  self.canonical))
        return {"rgb": rgb, "relevancy": torch.stack(maps, dim=1)}

    @torch.no_grad()
    def class_scores(self, view: int, stride: int = 1) -> tuple[Tensor, Tensor]:
        """Per-class relevancy ``[h, w, C]`` at each class's own scale, and the colour render ``[h, w, 3]``, at every
        ``stride``-th pixel of the view.

        Scale rule: per evaluation view and per class, the query scale whose relevancy map over the whole view has
        the highest value (LERF's rule; LERF's code applies it per batch of rays, which makes the chosen scale
        depend on the batching). The segmentation is the argmax over classes of these relevancies. Memory: the
        maps of all scales, ``H * W * S * C`` floats, are held until the choice.
        """
        rays = self.eval_rays(view, stride)
        out = render_in_chunks(self.render, rays.reshape(-1, 6), self.chunk, keys=("relevancy", "rgb"))
        _, scores = select_scale(out["relevancy"].transpose(0, 1))
        return scores.reshape(*rays.shape[:2], -1), out["rgb"].reshape(*rays.shape[:2], 3)
