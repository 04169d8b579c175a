"""What a stage-2 step trains on: rays of the training views and their teacher targets, one class per method.

A supervision draws its rays with its own seeded generator (checkpointed, so a resumed run draws what would have
followed) and reads the teacher through the interface it names in ``teacher_type``; the builder checks the
configured teacher against it before anything is trained. Built from the config as a partial and completed by the
stage with ``(scene, teacher, text, device, seed)``.

* :class:`TokenRays`: Laser's random crops, one teacher token and one block-mean ray per 16-px block (LASER.md §9.3).
* :class:`PixelPyramidRays`: 3D-OVS's random pixels and their crop-pyramid maps (§14.4 a), and, with DINO weights,
  its patch branch (§14.4 b).
* :class:`ScaleRays`: LERF's random pixels at random image-plane scales and the pyramid query (§14.6).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from laser.data.patches import PatchSampler
from laser.data.scene import Scene
from laser.errors import ConfigError
from laser.language.teachers.base import PixelPyramidTeacher, ScalePyramidTeacher, Teacher, TokenTeacher
from laser.language.text import SceneText
from laser.modules.relevancy import relevancy_maps

if TYPE_CHECKING:
    from laser.language.dino import DinoExtractor

DINO_PATCH = 8   # 3D-OVS pools the patch rays 8x8: one ray per token of its DINO ViT-B/8


class Supervision:
    """``sample(teacher)`` gives one step's batch (a dict of tensors on the stage's device, no gradients)."""

    teacher_type: type[Teacher] = Teacher

    @classmethod
    def check(cls, scene: Scene, **settings) -> None:
        """Refuse settings that cannot work on ``scene``, before anything is built (cheap); ``settings`` are the
        constructor's keyword arguments from the config."""

    def sample(self, teacher: Teacher) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class TokenRays(Supervision):
    """Laser's crops: ``patch_num`` random ``patch_size`` crops per step (:class:`~laser.data.patches.PatchSampler`).

    Batch: ``rays`` ``[N, 6]`` and ``rgb`` ``[N, 3]`` of the ``N = B g g`` block-mean rays, the teacher's tokens
    ``targets`` ``[N, D]`` (fp32) in the same order, and ``grid`` ``(B, g, g)``.
    """

    teacher_type = TokenTeacher

    def __init__(self, scene: Scene, teacher: Teacher, text: SceneText, device: torch.device, seed: int,
                 patch_size: int = 256, patch_num: int = 8, view_order: str = "permutation"):
        self.device = device
        self.sampler = PatchSampler(scene, patch_size, patch_num, seed=seed, view_order=view_order)

    @classmethod
    def check(cls, scene: Scene, patch_size: int = 256, patch_num: int = 8, view_order: str = "permutation") -> None:
        PatchSampler.check(scene, patch_size, patch_num, view_order=view_order)

    def sample(self, teacher: TokenTeacher) -> dict[str, Any]:
        sample = self.sampler.sample()
        return {"rays": sample.rays.to(self.device), "rgb": sample.rgb.to(self.device),
                "targets": teacher(sample.batch).flatten(0, 2).float().to(self.device), "grid": sample.grid}

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


class PixelPyramidRays(Supervision):
    """3D-OVS's ray branch: ``batch_size`` random pixels of ``clip_input`` (a random share, drawn once) of the
    training views, with the pyramid embeddings and relevancy maps at each pixel; and the patch branch's crops when
    DINO weights are found.

    Batch: ``rays`` ``[N, 6]``, ``rgb`` ``[N, 3]``, ``targets`` ``[N, S, D]`` (L2-normalised per scale),
    ``relevancy`` ``[N, S, C]`` (:func:`~laser.modules.relevancy.relevancy_maps`, computed once); with DINO also
    ``patch_rays`` ``[B g g, 6]`` (one ray per 8x8 block of ``patch_num`` crops of ``patch_size``), their DINO
    tokens ``dino_tokens`` ``[B, g g, K]`` and ``patch_grid`` ``(B, g, g)``.

    Args:
        batch_size: rays per step of the ray branch (4096).
        clip_input: share of the training views whose pyramids supervise the ray branch (0.5).
        patch_size, patch_num: crops of the DINO patch branch (256 px, 8), at the patch scene's resolution.
        use_dino: run the patch branch when DINO weights are found (:func:`laser.language.dino.load_dino`); they
            are looked for at the first step: evaluation never needs them.
        dino_weights: a local DINO state dict; None: the cache of ``dino_model``.
        dino_model: the timm DINO model whose cache is searched (3D-OVS: ViT-B/8).
    """

    teacher_type = PixelPyramidTeacher

    def __init__(self, scene: Scene, teacher: PixelPyramidTeacher, text: SceneText, device: torch.device, seed: int,
                 batch_size: int = 4096, clip_input: float = 0.5, patch_size: int = 256, patch_num: int = 8,
                 use_dino: bool = True, dino_weights: str | None = None,
                 dino_model: str = "vit_base_patch8_224.dino"):
        self.check(scene, batch_size, clip_input, patch_size, patch_num)
        self.scene, self.device, self.batch_size = scene, device, batch_size
        self.patches = PatchSampler(scene, patch_size, patch_num, DINO_PATCH, seed=seed, view_order="replacement")
        self.dino: DinoExtractor | None = None
        self.dino_weights, self.dino_model = dino_weights, dino_model
        self._dino_pending = use_dino
        # One generator for the view choice, then the ray positions: both replay from the checkpointed state.
        self.generator = torch.Generator().manual_seed(seed)
        train_views = list(scene.train_views)
        count = max(1, round(clip_input * len(train_views)))
        chosen = torch.randperm(len(train_views), generator=self.generator)[:count]
        self.views = sorted(train_views[i] for i in chosen.tolist())
        # Rays of the chosen views once, so that a step's rays are a gather.
        self.view_rays = torch.stack([scene.rays(v).reshape(scene.height, scene.width, 6) for v in self.views])
        embeddings = text.embeddings.to(device)
        with torch.no_grad():
            self.relevancy = torch.stack([relevancy_maps(teacher.maps(v).to(device).float(), embeddings)
                                          for v in self.views])            # [V, S, C, H', W']

    @classmethod
    def check(cls, scene: Scene, batch_size: int = 4096, clip_input: float = 0.5, patch_size: int = 256,
              patch_num: int = 8, use_dino: bool = True, dino_weights: str | None = None,
              dino_model: str = "") -> None:
        if batch_size <= 0 or not 0 < clip_input <= 1:
            raise ConfigError("model.supervision", f"3D-OVS needs batch_size > 0 and 0 < clip_input <= 1, got "
                                                   f"batch_size={batch_size}, clip_input={clip_input}")
        PatchSampler.check(scene, patch_size, patch_num, DINO_PATCH)

    @property
    def scales(self) -> int:
        return self.relevancy.shape[1]

    def dino_extractor(self) -> DinoExtractor | None:
        """The DINO extractor of the patch branch, loaded once on first use; None without weights."""
        if self._dino_pending:
            self._dino_pending = False
            from laser.language.dino import load_dino  # timm is imported only by runs that use DINO

            dino = load_dino(self.dino_weights, self.dino_model)
            if dino is not None and dino.patch_size != DINO_PATCH:
                raise ConfigError("model.supervision.dino_model",
                                  f"3D-OVS pools its patch rays {DINO_PATCH}x{DINO_PATCH}, one per DINO ViT-B/8 token; "
                                  f"the DINO weights have {dino.patch_size}-px patches (choose a /8 model)")
            self.dino = dino.to(self.device) if dino is not None else None
        return self.dino

    def sample(self, teacher: PixelPyramidTeacher) -> dict[str, Any]:
        n, generator, scene = self.batch_size, self.generator, self.scene
        slot = torch.randint(len(self.views), (n,), generator=generator)
        row = torch.randint(scene.height, (n,), generator=generator)
        col = torch.randint(scene.width, (n,), generator=generator)
        # The pyramid may be smaller than the images (image_downsample): read the pyramid pixel under each pixel.
        map_height, map_width = self.relevancy.shape[-2:]
        map_row, map_col = row * map_height // scene.height, col * map_width // scene.width
        targets = torch.empty(n, self.scales, teacher.embed_dim, device=self.device)
        for index, view in enumerate(self.views):
            hit = (slot == index).nonzero()[:, 0]
            maps = teacher.maps(view)
            picked = maps[:, :, map_row[hit].to(maps.device), map_col[hit].to(maps.device)]      # [S, D, n_v]
            targets[hit.to(self.device)] = picked.permute(2, 0, 1).to(self.device, torch.float32)
        slot_d, map_row_d, map_col_d = slot.to(self.device), map_row.to(self.device), map_col.to(self.device)
        batch = {"rays": self.view_rays[slot, row, col].to(self.device),
                 "rgb": scene.images[torch.tensor(self.views)[slot], row, col].to(self.device),
                 "targets": F.normalize(targets, dim=-1),
                 "relevancy": self.relevancy[slot_d, :, :, map_row_d, map_col_d]}
        dino = self.dino_extractor()
        if dino is not None:
            sample = self.patches.sample()
            crops, g, _ = sample.grid
            tokens = dino(sample.batch.images.to(self.device)).float().reshape(crops, g * g, -1)
            batch |= {"patch_rays": sample.rays.to(self.device), "dino_tokens": tokens, "patch_grid": sample.grid}
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "patches": self.patches.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.patches.load_state_dict(state["patches"])


class ScaleRays(Supervision):
    """LERF's rays: ``batch_size`` rays uniformly over the training views (a random view, then a random pixel), each
    at an image-plane scale ``s_img ~ U(scale_min, scale_max)``: the teacher pyramid's range (fractions of the image
    height). With DINO weights, the DINO patch features of the training views are computed once as targets.

    Batch: ``rays`` ``[N, 6]``, camera ``centres`` ``[N, 3]`` (world), ``image_scale`` ``[N]``, the pyramid's
    trilinear embedding ``language`` ``[N, D]`` at each pixel and scale, and with DINO ``dino`` ``[N, K]``.

    Args:
        batch_size: rays per step (4096).
        use_dino: the DINO regulariser, when its weights are on disk (never downloaded).
        dino_weights: a local DINO ViT state dict; None: timm's cache of ``dino_model``.
        dino_model: LERF's ``dino_vits8``.
        dino_image_size: shorter image side given to DINO, pixels (LERF: 500).
    """

    teacher_type = ScalePyramidTeacher

    def __init__(self, scene: Scene, teacher: ScalePyramidTeacher, text: SceneText, device: torch.device, seed: int,
                 batch_size: int = 4096, use_dino: bool = True, dino_weights: str | None = None,
                 dino_model: str = "vit_small_patch8_224.dino", dino_image_size: int = 500):
        self.check(scene, batch_size)
        self.scene, self.device, self.batch_size = scene, device, batch_size
        self.scale_range = (teacher.scale_min, teacher.scale_max)
        self.pyramid_downsample = teacher.image_downsample               # teacher image / scene image, per side
        self.views = list(scene.train_views)
        # Rays of every training view once, so that a step's rays are a gather (as Laser's patch sampler).
        self.view_rays = torch.stack([scene.rays(v) for v in self.views])               # [V, H*W, 6]
        self.view_c2w = scene.c2w[self.views].to(device)                                 # [V, 3, 4]
        self.generator = torch.Generator().manual_seed(seed)
        dino = None
        if use_dino:
            from laser.language.dino import load_dino  # timm is imported only by runs that use DINO

            dino = load_dino(dino_weights, dino_model)
        # The extractor is needed once: its features of the training views are the targets.
        self.dino_targets = self._dino_features(dino.to(device), dino_image_size) if dino else None

    @classmethod
    def check(cls, scene: Scene, batch_size: int = 4096, use_dino: bool = True, dino_weights: str | None = None,
              dino_model: str = "", dino_image_size: int = 500) -> None:
        if batch_size <= 0:
            raise ConfigError("model.supervision.batch_size", f"LERF needs at least one ray per step, not {batch_size}")

    @property
    def dino_dim(self) -> int | None:
        return None if self.dino_targets is None else int(self.dino_targets.shape[1])

    @torch.no_grad()
    def _dino_features(self, dino: DinoExtractor, image_size: int) -> Tensor:
        """DINO patch features ``[V, K, h, w]`` of the training views, each image resized so that its shorter side
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

    def sample(self, teacher: ScalePyramidTeacher) -> dict[str, Any]:
        b, g, scene = self.batch_size, self.generator, self.scene
        slots = torch.randint(len(self.views), (b,), generator=g)
        pixels = torch.stack([torch.randint(scene.height, (b,), generator=g),
                              torch.randint(scene.width, (b,), generator=g)], dim=-1)       # [B, 2] (row, col)
        low, high = self.scale_range
        image_scale = low + (high - low) * torch.rand(b, generator=g)
        d = self.pyramid_downsample
        pyramid_rc = (pixels + 0.5) / d - 0.5             # pixel centres at the pyramid's resolution
        # DINO grids cover the image: pixel centres in grid_sample's [-1, 1] (align_corners=False) coordinates.
        size = torch.tensor([scene.height, scene.width])
        dino_xy = ((pixels + 0.5) / size * 2 - 1).flip(-1).to(self.device)
        language = torch.empty(b, teacher.embed_dim, device=self.device)
        dino = None if self.dino_targets is None else torch.empty(b, self.dino_targets.shape[1], device=self.device)
        for slot in slots.unique().tolist():
            rows = (slots == slot).nonzero()[:, 0]
            here = rows.to(self.device)
            language[here] = teacher.query(self.views[slot], pyramid_rc[rows], image_scale[rows]).to(
                self.device, torch.float32)
            if dino is not None:
                grid = dino_xy[here][None, None]                                          # [1, 1, n, 2]
                dino[here] = F.grid_sample(self.dino_targets[slot][None], grid, align_corners=False)[0, :, 0].T
        batch = {"rays": self.view_rays[slots, pixels[:, 0] * scene.width + pixels[:, 1]].to(self.device),
                 "centres": self.view_c2w[slots.to(self.device), :, 3], "image_scale": image_scale.to(self.device),
                 "language": language}
        if dino is not None:
            batch["dino"] = dino
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
