"""Laser's stage 2 (LASER.md §4-10): distil dense teacher features into the frozen-density radiance field.

Per step: random crops go through the teacher (one feature per 16-px token), and one block-mean ray per token is
rendered. Per sample point, the appearance features feed the semantic head; LTQA mixes all points of the chunk;
compositing gives the NeRF feature ``f`` of the ray. The label volume gives each ray a slot distribution whose
projection on the class text embeddings is the target of the CE loss (§7). The adapter maps teacher tokens (and,
after ``cross_start_iter``, NeRF features) with self-cross training (§4); the text-augmentation loss shapes it (§8).
Density is frozen throughout; appearance is fine-tuned from ``joint_start_iter`` (§9.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laser.data.patches import PatchSampler
from laser.data.scene import Scene
from laser.fields.base import RadianceField
from laser.language.teachers.base import Teacher
from laser.language.text import SceneText
from laser.language.text_augmentation import text_augmentation_loss
from laser.methods.segmentation import SegmentationStage
from laser.modules.adapter import Adapter, distillation_loss, self_cross_loss
from laser.modules.label_volume import LabelVolume, ce_students, label_ce_loss, label_targets, ray_distribution
from laser.modules.ltqa import LTQA
from laser.modules.semantic_head import SemanticHead
from laser.rendering import composite_packed


class LaserSegmentation(SegmentationStage):
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
                 adapter_at_inference: bool = False, adapter_bound_branch: bool = False, seed: int = 20230417):
        super().__init__(scene, eval_scene, field, teacher, text, device, n_iters, chunk, n_samples, distance_scale,
                         weight_threshold, joint_start_iter, lr_app_grid, lr_app_network, lr_decay_ratio, seed)
        self.sampler = PatchSampler(scene, patch_size, patch_num, seed=seed)
        self.cross_start_iter = cross_start_iter
        self.temperature, self.ce_mode = temperature, ce_mode
        # A loss term exists only when its module does, so switched-off components need no zero weight here.
        self.loss_weights = {"rgb_mse": 1.0, "feature": 1.0, "self_feature": self_weight, "relevancy": relevancy_weight,
                             "aug": aug_weight}
        self.use_self_cross, self.use_text_augmentation = use_self_cross, use_text_augmentation
        self.adapter_at_inference = adapter_at_inference
        self.lr, self.lr_label_grid = lr, lr_label_grid

        dim = self.text.shape[1]
        self.head = SemanticHead(in_dim=field.app_dim, out_dim=dim).to(self.device)
        self.ltqa = LTQA(dim, ltqa_dim).to(self.device) if use_ltqa else None
        self.labels = (LabelVolume(field.grid_resolution(), label_components, num_slots=dim).to(self.device)
                       if use_label_volume else None)
        self.adapter = Adapter(dim, bound_branch=adapter_bound_branch).to(self.device) if use_adapter else None
        self.reset_optimizer()

    def modules(self) -> dict[str, nn.Module]:
        return {k: m for k, m in {"head": self.head, "ltqa": self.ltqa, "labels": self.labels,
                                  "adapter": self.adapter}.items() if m is not None}

    def param_groups(self) -> list[dict]:
        groups = [{"params": list(m.parameters()), "lr": self.lr} for k, m in self.modules().items() if k != "labels"]
        if self.labels is not None:
            groups += [{"params": list(self.labels.grid.parameters()), "lr": self.lr_label_grid},
                       {"params": list(self.labels.basis.parameters()), "lr": self.lr}]
        return groups

    def extra_state(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])

    # --- rendering -----------------------------------------------------------------------------------------------
    def render(self, rays: Tensor, train: bool = False) -> dict[str, Tensor]:
        """Semantic features ``[R, D]``, colour ``[R, 3]`` and, when training with the label volume, slot
        distributions ``[R, D]`` of rays ``[R, 6]``. LTQA sees every shaded point of the call: call it one chunk at a
        time."""
        samples = self.shaded_samples(rays, train)
        weights, shaded = samples["weights"], samples["shaded"]
        xyz = samples["points"][shaded]
        app = self.field.app_features(xyz)
        semantics = self.head(app)
        if self.ltqa is not None:
            semantics = self.ltqa(semantics)
        out = {"features": composite_packed(weights, semantics, shaded),
               "rgb": composite_packed(weights, self.field.color(app, samples["viewdirs"][shaded]), shaded)}
        if self.labels is not None and train:                            # only the CE loss reads the slots
            out["slots"] = ray_distribution(self.labels(self.field.normalize(xyz)), weights, shaded)
        return out

    # --- training ------------------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        self.begin_step(step)
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
        self.apply_gradients(loss)
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    # --- evaluation ----------------------------------------------------------------------------------------------
    def query_features(self, features: Tensor) -> Tensor:
        """Through the adapter only with ``adapter_at_inference`` (off by the ruling, as the official test script)."""
        if self.adapter is None or not self.adapter_at_inference:
            return features
        return torch.cat([self.adapter(block)[1] for block in features.split(8192)])
