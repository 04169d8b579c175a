"""Laser's stage 2 (LASER.md §4-10): distil dense teacher features into the frozen-density radiance field.

Per step: random crops go through the teacher (one feature per 16-px token), and one block-mean ray per token is
rendered. Per sample point, the appearance features feed the semantic head; LTQA mixes all points of the chunk;
compositing gives the NeRF feature ``f`` of the ray. The label volume gives each ray a slot distribution whose
projection on the class text embeddings is the target of the CE loss (§7). The adapter maps teacher tokens (and,
after ``cross_start_iter``, NeRF features) with self-cross training (§4); the text-augmentation loss shapes it (§8).
Density is frozen throughout; appearance is fine-tuned from ``joint_start_iter`` (§9.4). The parts and the loss map
come from ``conf/model/laser.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laser.language.text_augmentation import text_augmentation_loss
from laser.methods.segmentation import SegmentationStage
from laser.modules.adapter import Adapter, distillation_loss, self_cross_loss
from laser.modules.label_volume import LabelVolume, ce_students, label_ce_loss, label_targets
from laser.modules.ltqa import LTQA
from laser.modules.semantic_head import SemanticHead
from laser.rendering import composite_affine, composite_packed


class LaserSegmentation(SegmentationStage):
    """The Laser stage: parts ``head``, ``ltqa``, ``adapter``, ``label_volume`` (the last three may be None: the
    ablations of §12) and the loss terms ``rgb_mse``, ``self_feature`` (L_self, §4.3), ``aug`` (L_aug, §8),
    ``feature`` (L_feat, §4.3), ``relevancy`` (L_rel, §7.3).

    Args (beyond :class:`~laser.methods.segmentation.SegmentationStage`'s):
        head, ltqa, adapter, label_volume: partials of the parts, completed with the field's and the text's sizes;
            None switches a part off.
        cross_start_iter: the adapter also maps the NeRF features, and the cross terms start, after this step;
            None: never (no self-cross training).
        adapter_at_inference: query through the adapter (off by the ruling, as the official test script).
        lr, lr_label_grid: head, LTQA, adapter and label basis; label planes and lines.
    """

    name = "laser"
    loss_names = ("rgb_mse", "self_feature", "aug", "feature", "relevancy")

    def __init__(self, *, head: Callable[..., SemanticHead], ltqa: Callable[..., LTQA] | None,
                 adapter: Callable[..., Adapter] | None, label_volume: Callable[..., LabelVolume] | None,
                 cross_start_iter: int | None = 8000, adapter_at_inference: bool = False, lr: float = 1e-4,
                 lr_label_grid: float = 0.02, **stage):
        super().__init__(**stage)
        self.cross_start_iter = cross_start_iter
        self.adapter_at_inference = adapter_at_inference
        self.lr, self.lr_label_grid = lr, lr_label_grid
        dim = self.text.shape[1]
        self.head = head(in_dim=self.field.app_dim, out_dim=dim).to(self.device)
        self.ltqa = ltqa(in_dim=dim).to(self.device) if ltqa is not None else None
        self.labels = (label_volume(resolution=self.field.grid_resolution(), num_slots=dim).to(self.device)
                       if label_volume is not None else None)
        self.adapter = adapter(dim=dim).to(self.device) if adapter is not None else None
        self.require({"self_feature": self.adapter, "aug": self.adapter, "relevancy": self.labels})
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

    # --- rendering -----------------------------------------------------------------------------------------------
    def render(self, rays: Tensor, train: bool = False) -> dict[str, Tensor]:
        """Semantic features ``[R, D]``, colour ``[R, 3]`` and, when training with the label volume, slot
        distributions ``[R, D]`` of rays ``[R, 6]``. LTQA sees every shaded point of the call: call it one chunk at a
        time."""
        samples = self.shaded_samples(rays, train)
        weights, shaded = samples["weights"], samples["shaded"]
        xyz = samples["points"][shaded]
        app = self.field.app_features(xyz)
        if self.ltqa is not None:
            # The 512-d semantics are never formed: the head's last layer and LTQA's W_qkv are one linear map, and
            # W_u is linear, so the d-dim mix is composited and mapped per ray. Equal up to float rounding.
            mix = self.ltqa.mix_after(self.head.last, self.head.hidden(app))
            features = composite_affine(weights, mix, shaded, self.ltqa.out)
        else:
            features = composite_packed(weights, self.head(app), shaded)
        out = {"features": features,
               "rgb": composite_packed(weights, self.field.color(app, samples["viewdirs"][shaded]), shaded)}
        if self.labels is not None and train:                            # only the CE loss reads the slots
            out["slots"] = self.labels.ray_distribution(self.field.normalize(xyz), weights, shaded)
        return out

    # --- training ------------------------------------------------------------------------------------------------
    def cross(self, step: int) -> bool:
        """Whether the self-cross phase is on at ``step`` (after ``cross_start_iter``)."""
        return self.adapter is not None and self.cross_start_iter is not None and step > self.cross_start_iter

    def outputs(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        """The render of the batch's rays plus, for the teacher tokens ``c`` ``[N, D]`` and the NeRF features ``f``:
        ``c0, c1`` (centred and adapted tokens; ``c`` itself without the adapter), in the cross phase ``f0, f1``,
        and ``f_hat`` (``f1`` in the cross phase, else ``f``): the student of L_feat and L_rel."""
        out = self.render(batch["rays"], train=True)
        c = batch["targets"]
        out["c0"], out["c1"] = self.adapter(c) if self.adapter is not None else (c, c)
        out["f_hat"] = out["features"]
        if self.cross(step):
            out["f0"], out["f1"] = self.adapter(out["features"])
            out["f_hat"] = out["f1"]
        return out

    def losses(self, batch: dict[str, Any], out: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        on, options = self.loss_weights, self.loss_options
        terms = {}
        if "rgb_mse" in on:
            terms["rgb_mse"] = F.mse_loss(out["rgb"], batch["rgb"])
        if "self_feature" in on:
            terms["self_feature"] = self_cross_loss(out["c0"], out["c1"], out.get("f0"), out.get("f1"),
                                                    **options["self_feature"])
        if "aug" in on:
            terms["aug"] = text_augmentation_loss(out["c1"], out["c0"], self.text, self.text_repeated)
        if "feature" in on:
            terms["feature"] = distillation_loss(out["c1"], out["f_hat"])
        if "relevancy" in on:
            targets, targets_t = label_targets(out["slots"], self.text)
            terms["relevancy"] = label_ce_loss(ce_students(out["f_hat"], out["c1"]), self.text, targets, targets_t,
                                               grid=batch["grid"], **options["relevancy"])
        return terms

    # --- evaluation ----------------------------------------------------------------------------------------------
    def query_features(self, features: Tensor) -> Tensor:
        """Through the adapter only with ``adapter_at_inference`` (off by the ruling, as the official test script)."""
        if self.adapter is None or not self.adapter_at_inference:
            return features
        return torch.cat([self.adapter(block)[1] for block in features.split(8192)])
