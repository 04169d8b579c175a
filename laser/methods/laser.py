"""Laser's stage 2 (LASER.md §4-10): distil dense teacher features into the frozen-density radiance field.

Per step: random crops go through the teacher (one feature per 16-px token), and one block-mean ray per token is
rendered. Per sample point, the appearance features feed the semantic head; LTQA mixes all points of the chunk;
compositing gives the NeRF feature ``f`` of the ray. The label volume gives each ray a slot distribution whose
projection on the class text embeddings is the target of the CE loss (§7). The adapter maps teacher tokens (and,
after ``cross_start_iter``, NeRF features) with self-cross training (§4); the text-augmentation loss shapes it (§8).
Density is frozen throughout; appearance is fine-tuned from ``joint_start_iter`` (§9.4).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from laser.data.patches import PatchSampler
from laser.data.scene import Scene
from laser.evaluation.metrics import segmentation_metrics
from laser.evaluation.pictures import (class_palette, legend, relevancy_map, save_png, segmentation_overlay,
                                      with_legend)
from laser.fields.base import RadianceField
from laser.language.teachers.base import Teacher
from laser.language.text import SceneText
from laser.language.text_augmentation import text_augmentation_loss
from laser.modules.adapter import Adapter, distillation_loss, self_cross_loss
from laser.modules.label_volume import LabelVolume, ce_students, label_ce_loss, label_targets, ray_distribution
from laser.modules.ltqa import LTQA
from laser.modules.semantic_head import SemanticHead
from laser.rendering import composite_packed, ray_weights, render_in_chunks


class LaserSegmentation:
    """The Laser stage. Components are switched off for ablations by ``use_*`` flags (§12: adapter, self-cross
    training, LTQA, label volume, text augmentation)."""

    name = "laser"

    def __init__(self, scene: Scene, eval_scene: Scene, field: RadianceField, teacher: Teacher, text: SceneText,
                 device: str | torch.device = "cpu", n_iters: int = 15000, patch_size: int = 256, patch_num: int = 8,
                 chunk: int = 4096, n_samples: int = 482, distance_scale: float = 25.0,
                 weight_threshold: float = 1e-4, joint_start_iter: int = 5000, cross_start_iter: int = 8000,
                 temperature: float = 0.2, self_weight: float = 1.0, relevancy_weight: float = 0.95,
                 aug_weight: float = 0.33, ce_mode: str = "intended", ltqa_dim: int = 48,
                 label_components: tuple[int, int, int] = (16, 4, 4), lr: float = 1e-4, lr_label_grid: float = 0.02,
                 lr_app_grid: float = 5e-3, lr_app_network: float = 5e-5, lr_decay_ratio: float = 0.1,
                 use_adapter: bool = True, use_self_cross: bool = True, use_ltqa: bool = True,
                 use_label_volume: bool = True, use_text_augmentation: bool = True,
                 adapter_at_inference: bool = False, seed: int = 20230417):
        self.scene, self.eval_scene = scene, eval_scene
        self.device = torch.device(device)
        self.field = field.to(self.device).requires_grad_(False)
        self.teacher = teacher.to(self.device)                            # prepared for ``scene``
        self.text = text.embeddings.to(self.device)                      # T  [C, D]
        self.text_repeated = text.repeated.to(self.device)               # T̃ [C, D]
        self.sampler = PatchSampler(scene, patch_size, patch_num, seed=seed)
        self.n_iters, self.chunk, self.n_samples = n_iters, chunk, n_samples
        self.distance_scale, self.weight_threshold = distance_scale, weight_threshold
        self.joint_start_iter, self.cross_start_iter = joint_start_iter, cross_start_iter
        self.temperature, self.ce_mode = temperature, ce_mode
        # A loss term exists only when its module does, so switched-off components need no zero weight here.
        self.loss_weights = {"rgb_mse": 1.0, "feature": 1.0, "self_feature": self_weight, "relevancy": relevancy_weight,
                             "aug": aug_weight}
        self.use_self_cross, self.use_text_augmentation = use_self_cross, use_text_augmentation
        self.adapter_at_inference = adapter_at_inference
        self.lrs = {"lr": lr, "label_grid": lr_label_grid, "app_grid": lr_app_grid, "app_network": lr_app_network}
        self.lr_factor = lr_decay_ratio ** (1.0 / n_iters)

        dim = self.text.shape[1]
        self.head = SemanticHead(in_dim=field.app_dim, out_dim=dim).to(self.device)
        self.ltqa = LTQA(dim, ltqa_dim).to(self.device) if use_ltqa else None
        self.labels = (LabelVolume(field.grid_resolution(), label_components, num_slots=dim).to(self.device)
                       if use_label_volume else None)
        self.adapter = Adapter(dim).to(self.device) if use_adapter else None
        self.generator = torch.Generator().manual_seed(seed)
        self.joint = False                                                # appearance fine-tuned (phase 2)
        self.optimizer = self._new_optimizer()

    # --- rendering -----------------------------------------------------------------------------------------------
    def render(self, rays: Tensor, train: bool = False) -> dict[str, Tensor]:
        """Semantic features ``[R, D]``, slot distributions ``[R, D]`` (with the label volume) and colour ``[R, 3]``
        of rays ``[R, 6]``. LTQA sees every shaded point of the call: call it one chunk at a time."""
        with torch.no_grad():                                              # density is frozen in stage 2
            samples = ray_weights(self.field, rays, self.scene.near_far, self.n_samples, self.distance_scale,
                                  self.generator if train else None)
        weights = samples["weights"]
        shaded = weights > self.weight_threshold
        xyz = samples["points"][shaded]
        app = self.field.app_features(xyz)
        semantics = self.head(app)
        if self.ltqa is not None:
            semantics = self.ltqa(semantics)
        out = {"features": composite_packed(weights, semantics, shaded),
               "rgb": composite_packed(weights, self.field.color(app, samples["viewdirs"][shaded]), shaded)}
        if self.labels is not None:
            out["slots"] = ray_distribution(self.labels(self.field.normalize(xyz)), weights, shaded)
        return out

    # --- training ------------------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        if step == self.joint_start_iter:
            self.joint = True
            self.optimizer = self._new_optimizer()
        sample = self.sampler.sample()
        with torch.no_grad():
            c = self.teacher(sample.batch).reshape(-1, self.text.shape[1]).float().to(self.device)   # [N, D]
        out = self.render(sample.rays.to(self.device), train=True)
        f = out["features"]
        losses = {"rgb_mse": F.mse_loss(out["rgb"], sample.rgb.to(self.device))}

        c0 = c1 = c
        f_hat = f
        if self.adapter is not None:
            c0, c1 = self.adapter(c)
            if self.use_self_cross and step > self.cross_start_iter:
                f0, f1 = self.adapter(f)
                f_hat = f1
                losses["self_feature"] = self_cross_loss(c0, c1, f0, f1)
            else:
                losses["self_feature"] = self_cross_loss(c0, c1)
            if self.use_text_augmentation and self.loss_weights["aug"]:
                losses["aug"] = text_augmentation_loss(c1, c0, self.text, self.text_repeated)
        losses["feature"] = distillation_loss(c1, f_hat)
        if self.labels is not None:
            targets, targets_t = label_targets(out["slots"], self.text)
            losses["relevancy"] = label_ce_loss(ce_students(f_hat, c1), self.text, targets, targets_t,
                                                self.temperature, self.ce_mode, sample.grid)
        loss = sum(self.loss_weights[k] * v for k, v in losses.items())

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        for group in self.optimizer.param_groups:
            group["lr"] *= self.lr_factor
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {k: m for k, m in {"head": self.head, "ltqa": self.ltqa, "labels": self.labels,
                                  "adapter": self.adapter}.items() if m is not None}

    def _new_optimizer(self) -> torch.optim.Optimizer:
        """Phase 1: the semantic modules. Phase 2 (from ``joint_start_iter``, learning rates reset): appearance too."""
        lr = self.lrs["lr"]
        groups = [{"params": list(m.parameters()), "lr": lr} for k, m in self._modules().items() if k != "labels"]
        if self.labels is not None:
            groups += [{"params": list(self.labels.grid.parameters()), "lr": self.lrs["label_grid"]},
                       {"params": list(self.labels.basis.parameters()), "lr": lr}]
        if self.joint:
            app = self.field.appearance_param_groups(self.lrs["app_grid"], self.lrs["app_network"])
            for group in app:
                for p in group["params"]:
                    p.requires_grad_(True)
            groups += app
        return torch.optim.Adam(groups, betas=(0.9, 0.99))

    # --- evaluation ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def class_scores(self, view: int) -> tuple[Tensor, Tensor]:
        """Cosine similarity of the rendered features to each class ``[H, W, C]`` and the render ``[H, W, 3]`` of
        one view of the evaluation scene (no temperature; §10)."""
        scene = self.eval_scene
        out = render_in_chunks(lambda r: self.render(r), scene.rays(view).to(self.device), self.chunk,
                               keys=("features", "rgb"))
        features = out["features"]
        if self.adapter is not None and self.adapter_at_inference:
            features = torch.cat([self.adapter(block)[1] for block in features.split(8192)])
        scores = F.normalize(features, dim=-1) @ self.text.T
        return scores.reshape(scene.height, scene.width, -1), out["rgb"].reshape(scene.height, scene.width, 3)

    def evaluate(self, out_dir: str | Path) -> dict[str, float]:
        """3D-OVS metrics on the annotated views (§11); overlays with a legend and per-class relevancy maps (cosine
        similarity to each class, colour-mapped per map) in ``out_dir``."""
        out_dir = Path(out_dir)
        for module in self._modules().values():
            module.eval()
        views = self.eval_scene.annotated_views
        palette = class_palette(len(self.eval_scene.classes))
        key = legend(self.eval_scene.classes, palette)
        truths, scores = [], []
        for view in views:
            score, rgb = self.class_scores(view)
            scores.append(score.cpu())
            truths.append(self.eval_scene.annotations[view])
            save_png(out_dir / f"segmentation_{view:03d}.png",
                     with_legend(segmentation_overlay(rgb.cpu(), score.argmax(-1).cpu(), palette), key))
            for index, name in enumerate(self.eval_scene.classes):
                save_png(out_dir / "relevancy" / f"{view:03d}_{name}.png", relevancy_map(score[..., index].cpu()))
        for module in self._modules().values():
            module.train()
        result = segmentation_metrics(truths, scores)
        metrics = {"miou": result["miou"], "accuracy": result["accuracy"]}
        (out_dir / "metrics.json").write_text(json.dumps({"metrics": metrics, "views": views,
                                                          "classes": self.eval_scene.classes,
                                                          "per_view_iou": result["per_view_iou"]}, indent=2))
        return metrics

    # --- checkpoints ---------------------------------------------------------------------------------------------
    def identity(self) -> dict:
        return {"stage": self.name, "scene": self.scene.name, "classes": self.scene.classes,
                "n_iters": self.n_iters}

    def state_dict(self) -> dict:
        return {"modules": {k: m.state_dict() for k, m in self._modules().items()},
                "field": self.field.state_dict(), "optimizer": self.optimizer.state_dict(),
                "sampler": self.sampler.state_dict(), "generator": self.generator.get_state(), "joint": self.joint}

    def load_state_dict(self, state: dict) -> None:
        for key, module in self._modules().items():
            module.load_state_dict(state["modules"][key])
        self.field.load_state_dict(state["field"])
        self.joint = state["joint"]
        self.optimizer = self._new_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["generator"])
