"""What every stage-2 method (Laser, 3D-OVS, LERF) shares: the frozen-density field, the schedule, evaluation and
checkpoints. A method adds its modules, its :meth:`train_step` and how a view's class scores are computed.

The shared schedule (LASER.md §9.4, identical in 3D-OVS §14): density is frozen throughout; from
``joint_start_iter`` the appearance grid and colour network are fine-tuned too (the optimizer is rebuilt with the
learning rates reset); every learning rate decays by ``lr_decay_ratio`` over ``n_iters``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laser.data.scene import Scene
from laser.evaluation.metrics import segmentation_metrics
from laser.evaluation.pictures import (class_palette, legend, relevancy_map, save_png, segmentation_overlay,
                                      with_legend)
from laser.evaluation.tables import write_atomic
from laser.fields.base import RadianceField
from laser.language.teachers.base import Teacher
from laser.language.text import SceneText
from laser.rendering import ray_weights, render_in_chunks


class SegmentationStage:
    """Base of the stage-2 methods. Subclasses set ``name``, build their modules in ``__init__`` and then call
    :meth:`reset_optimizer`, and implement :meth:`modules`, :meth:`param_groups`, :meth:`train_step` and
    :meth:`render` (returning at least ``rgb`` ``[R, 3]`` and, unless :meth:`class_scores` is overridden,
    ``features`` ``[R, D]``)."""

    name = "segmentation"
    teacher_form = "dense"          # the teacher form the method learns from (Teacher.form)

    def __init__(self, scene: Scene, eval_scene: Scene, field: RadianceField, teacher: Teacher, text: SceneText,
                 device: str | torch.device = "cpu", n_iters: int = 15000, chunk: int = 4096, n_samples: int = 482,
                 distance_scale: float = 25.0, weight_threshold: float = 1e-4, joint_start_iter: int = 5000,
                 lr_app_grid: float = 5e-3, lr_app_network: float = 5e-5, lr_decay_ratio: float = 0.1,
                 seed: int = 20230417):
        if getattr(teacher, "form", None) != self.teacher_form:
            raise ValueError(f"{self.name} learns from a teacher of form {self.teacher_form!r}; "
                             f"{type(teacher).__name__} has form {getattr(teacher, 'form', None)!r} "
                             f"(choose the teacher with teacher=... and teacher.form=...)")
        self.scene, self.eval_scene = scene, eval_scene
        self.device = torch.device(device)
        self.field = field.to(self.device).requires_grad_(False)
        self.teacher = teacher.to(self.device)                            # prepared for ``scene``
        self.text = text.embeddings.to(self.device)                      # T  [C, D]
        self.text_repeated = text.repeated.to(self.device)               # T̃ [C, D]
        self.n_iters, self.chunk, self.n_samples = n_iters, chunk, n_samples
        self.distance_scale, self.weight_threshold = distance_scale, weight_threshold
        self.joint_start_iter = joint_start_iter
        self.app_lrs = (lr_app_grid, lr_app_network)
        self.lr_factor = lr_decay_ratio ** (1.0 / n_iters)
        self.generator = torch.Generator().manual_seed(seed)            # stratified jitter along the rays
        self.joint = False                                                # appearance fine-tuned (phase 2)
        self.optimizer: torch.optim.Optimizer | None = None

    # --- what a method provides ----------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """The method's trainable modules by name (checkpointed, switched to eval mode for evaluation)."""
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        """Optimizer groups of the method's own modules (the appearance groups are added by the base)."""
        raise NotImplementedError

    def render(self, rays: Tensor, train: bool = False) -> dict[str, Tensor]:
        raise NotImplementedError

    def train_step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    def extra_state(self) -> dict:
        """Method state beyond modules, field and optimizer (samplers, generators)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # --- shared pieces -------------------------------------------------------------------------------------------
    def shaded_samples(self, rays: Tensor, train: bool) -> dict[str, Tensor]:
        """Frozen-density samples of rays ``[R, 6]`` (:func:`laser.rendering.ray_weights`) plus ``shaded``
        ``[R, S]``: the points heavy enough to be given semantics (3D-OVS / Laser's app_mask)."""
        with torch.no_grad():
            samples = ray_weights(self.field, rays, self.scene.near_far, self.n_samples, self.distance_scale,
                                  self.generator if train else None)
        samples["shaded"] = samples["weights"] > self.weight_threshold
        return samples

    def begin_step(self, step: int) -> None:
        """Call first in :meth:`train_step`: switches to joint fine-tuning at ``joint_start_iter``."""
        if step == self.joint_start_iter:
            self.joint = True
            self.reset_optimizer()

    def apply_gradients(self, loss: Tensor) -> None:
        """Call last in :meth:`train_step`: one optimizer step, then the learning-rate decay."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        for group in self.optimizer.param_groups:
            group["lr"] *= self.lr_factor

    def reset_optimizer(self) -> None:
        """Phase 1: the method's modules. Phase 2 (``joint``, learning rates reset): the appearance too."""
        groups = self.param_groups()
        if self.joint:
            app = self.field.appearance_param_groups(*self.app_lrs)
            for group in app:
                for p in group["params"]:
                    p.requires_grad_(True)
            groups += app
        self.optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99))

    # --- evaluation ----------------------------------------------------------------------------------------------
    def query_features(self, features: Tensor) -> Tensor:
        """The rendered features ``[R, D]`` as compared with the text embeddings at query time."""
        return features

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """The method's modules in eval mode for the block, each back in its previous mode after it (even on error):
        the adapter's centring statistics must not move while views are scored."""
        modes = {name: module.training for name, module in self.modules().items()}
        for module in self.modules().values():
            module.eval()
        try:
            yield
        finally:
            for name, module in self.modules().items():
                module.train(modes[name])

    def eval_rays(self, view: int, stride: int = 1) -> Tensor:
        """Rays ``[h, w, 6]`` of every ``stride``-th pixel (both axes) of an evaluation view, on the device."""
        scene = self.eval_scene
        return scene.rays(view).reshape(scene.height, scene.width, 6)[::stride, ::stride].to(self.device)

    @torch.no_grad()
    def class_scores(self, view: int, stride: int = 1) -> tuple[Tensor, Tensor]:
        """Per-class scores ``[h, w, C]`` (argmax is the segmentation; here the cosine similarity of the rendered
        feature to each class, no temperature, §10) and the colour render ``[h, w, 3]`` of an evaluation view, at
        every ``stride``-th pixel (1: the full view; more for quick looks during experiments)."""
        rays = self.eval_rays(view, stride)
        out = render_in_chunks(self.render, rays.reshape(-1, 6), self.chunk, keys=("features", "rgb"))
        scores = F.normalize(self.query_features(out["features"]), dim=-1) @ self.text.T
        return scores.reshape(*rays.shape[:2], -1), out["rgb"].reshape(*rays.shape[:2], 3)

    def evaluate(self, out_dir: str | Path, extra: dict[str, float] | None = None) -> dict[str, float]:
        """3D-OVS metrics on the annotated views (§11); overlays with a legend and per-class relevancy maps
        (colour-mapped per map) in ``out_dir``. ``extra`` columns (the training cost) join the metrics, returned and
        in ``metrics.json``, which is written once."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        views = self.eval_scene.annotated_views
        palette = class_palette(len(self.eval_scene.classes))
        key = legend(self.eval_scene.classes, palette)
        truths, scores = [], []
        with self.evaluating():
            for view in views:
                score, rgb = self.class_scores(view)
                scores.append(score.cpu())
                truths.append(self.eval_scene.annotations[view])
                save_png(out_dir / f"segmentation_{view:03d}.png",
                         with_legend(segmentation_overlay(rgb.cpu(), score.argmax(-1).cpu(), palette), key))
                for index, name in enumerate(self.eval_scene.classes):
                    save_png(out_dir / "relevancy" / f"{view:03d}_{name}.png",
                             relevancy_map(score[..., index].cpu()))
        result = segmentation_metrics(truths, scores)
        # The teacher's stored bytes ride along: the comparison tables set them beside the scores.
        metrics = {"miou": result["miou"], "accuracy": result["accuracy"],
                   "feature_bytes": self.teacher.stored_bytes(), **(extra or {})}
        write_atomic(out_dir / "metrics.json", json.dumps({"metrics": metrics, "views": views,
                                                           "classes": self.eval_scene.classes,
                                                           "per_view_iou": result["per_view_iou"]}, indent=2))
        return metrics

    # --- checkpoints ---------------------------------------------------------------------------------------------
    def identity(self) -> dict:
        return {"stage": self.name, "scene": self.scene.name, "classes": self.scene.classes,
                "n_iters": self.n_iters}

    def state_dict(self) -> dict:
        return {"modules": {k: m.state_dict() for k, m in self.modules().items()},
                "field": self.field.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "teacher_rng": self.teacher.rng_state(),
                "joint": self.joint, **self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        for key, module in self.modules().items():
            module.load_state_dict(state["modules"][key])
        self.field.load_state_dict(state["field"])
        self.joint = state["joint"]
        self.reset_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.teacher.set_rng_state(state["teacher_rng"])
        self.load_extra_state(state)
