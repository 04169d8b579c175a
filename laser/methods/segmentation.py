"""What every stage-2 method (Laser, 3D-OVS, LERF) shares: the frozen-density field, the training step, the schedule,
evaluation and checkpoints. A method is a composition: it builds its parts (given by the config) and implements
:meth:`~SegmentationStage.outputs`, :meth:`~SegmentationStage.losses` and :meth:`~SegmentationStage.param_groups`.

One step (:meth:`SegmentationStage.train_step`): the supervision samples rays and asks the teacher for their targets;
the method renders its outputs and computes its loss terms; the stage weighs them by ``losses.<name>.weight``, sums
them, and steps the optimiser, which skips a step whose loss or gradients are not finite; the loop raises for it at
its next logging interval (:meth:`SegmentationStage.check_finite`). Nothing in the step waits for the device.

The shared schedule (LASER.md §9.4, identical in 3D-OVS §14): density is frozen throughout; from
``joint_start_iter`` the appearance grid and colour network are fine-tuned too (the optimizer is rebuilt with the
learning rates reset); every learning rate decays by ``lr_decay_ratio`` over ``n_iters``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laser.data.scene import Scene
from laser.errors import ConfigError, NonFiniteError
from laser.evaluation.metrics import per_query_metrics, segmentation_metrics
from laser.evaluation.pictures import (class_palette, legend, relevancy_map, save_png, segmentation_overlay,
                                      with_legend)
from laser.evaluation.tables import write_atomic
from laser.fields.base import RadianceField
from laser.language.teachers.base import Teacher
from laser.language.text import SceneText
from laser.methods.optimizer import adam, load_adam_state
from laser.methods.supervision import Supervision
from laser.rendering import ray_weights, render_in_chunks

LAYOUT = 2   # of stage-2 checkpoints: 2 since methods are compositions of parts (1 had no number)
# The per-query protocol's threshold on each phrase's normalised relevancy: LangSplat rescales the min-max
# normalised map to [-1, 1], clips it to [0, 1] and keeps > 0.4, which is > 0.7 of the normalised map.
PER_QUERY_THRESHOLD = 0.7


@dataclass
class RayRendering:
    """How stage 2 renders through the frozen field.

    Args:
        chunk: rays per render call at evaluation. LTQA mixes every point of a call, so for Laser the size is part
            of the method (a training batch is one call; the ruling keeps the two alike).
        n_samples: samples per ray (Laser: from the stage-1 initial grid, §9.3).
        distance_scale: ``alpha = 1 - exp(-sigma * delta * distance_scale)``: stage 1's.
        weight_threshold: points lighter than this get no semantics (3D-OVS / Laser's app_mask).
    """

    chunk: int = 4096
    n_samples: int = 482
    distance_scale: float = 25.0
    weight_threshold: float = 1e-4

    def __post_init__(self):
        if self.n_samples < 1:
            raise ConfigError("model.rendering.n_samples", f"must be at least 1 sample per ray, not {self.n_samples}")
        if self.chunk < 1:
            raise ConfigError("model.rendering.chunk", f"a render call needs at least one ray (of {self.n_samples} "
                                                       f"samples), not {self.chunk}")


@dataclass
class Schedule:
    """Steps and learning rates shared by every stage-2 method (§9.4).

    Args:
        n_iters: training steps.
        joint_start_iter: step from which the appearance is fine-tuned too; None: never (LERF).
        lr_app_grid, lr_app_network: the appearance grid's and network's rates in the joint phase.
        lr_decay_ratio: every rate reaches this share of its start at ``n_iters``.
    """

    n_iters: int = 15000
    joint_start_iter: int | None = 5000
    lr_app_grid: float = 5e-3
    lr_app_network: float = 5e-5
    lr_decay_ratio: float = 0.1

    def __post_init__(self):
        if self.n_iters < 1:
            raise ConfigError("model.schedule.n_iters", f"stage 2 needs at least one step, not {self.n_iters}")


def loss_weights(losses: Mapping[str, Mapping[str, Any] | None], known: tuple[str, ...]) -> dict[str, float]:
    """``{name: weight}`` of the config's loss map, without the switched-off terms (null or weight 0)."""
    unknown = sorted(set(losses) - set(known))
    if unknown:
        raise ConfigError(f"model.losses.{unknown[0]}", f"no such loss term; this method's are {', '.join(known)}")
    unweighted = sorted(name for name, spec in losses.items() if spec is not None and "weight" not in spec)
    if unweighted:
        raise ConfigError(f"model.losses.{unweighted[0]}", "has no weight (null switches a term off)")
    return {name: float(spec["weight"]) for name, spec in losses.items() if spec is not None and spec["weight"]}


class SegmentationStage:
    """Base of the stage-2 methods. Subclasses set ``name`` and ``loss_names``, build their parts in ``__init__``
    (after this one's) and then call :meth:`reset_optimizer`, and implement :meth:`modules`, :meth:`param_groups`,
    :meth:`outputs`, :meth:`losses` and :meth:`render` (returning at least ``rgb`` ``[R, 3]`` and, unless
    :meth:`class_scores` is overridden, ``features`` ``[R, D]``).

    Args:
        scene, eval_scene: the scene at the supervision's and at the evaluation's resolution.
        field: the stage-1 radiance field (density frozen here).
        teacher: prepared for ``scene``; of the interface ``supervision`` reads.
        text: the scene's text embeddings.
        supervision: builds the method's :class:`~laser.methods.supervision.Supervision` from
            ``(scene, teacher, text, device, seed)`` (a partial from the config).
        losses: ``{name: {weight: w, ...options}}``; a null entry or a zero weight switches the term off.
        rendering, schedule: :class:`RayRendering`, :class:`Schedule`.
        seed: seeds the ray jitter and the supervision's draws.
    """

    name = "segmentation"
    loss_names: tuple[str, ...] = ()

    def __init__(self, scene: Scene, eval_scene: Scene, field: RadianceField, teacher: Teacher, text: SceneText,
                 supervision: Callable[..., Supervision], losses: Mapping[str, Mapping[str, Any] | None],
                 rendering: RayRendering, schedule: Schedule, device: str | torch.device = "cpu",
                 seed: int = 20230417):
        self.scene, self.eval_scene = scene, eval_scene
        self.device = torch.device(device)
        self.field = field.to(self.device).requires_grad_(False)
        self.teacher = teacher.to(self.device)                            # prepared for ``scene``
        self.text = text.embeddings.to(self.device)                      # T  [C, D]
        self.text_repeated = text.repeated.to(self.device)               # T̃ [C, D]
        self.supervision = supervision(scene=scene, teacher=self.teacher, text=text, device=self.device, seed=seed)
        self.loss_weights = loss_weights(losses, self.loss_names)
        self.loss_options = {name: {k: v for k, v in losses[name].items() if k != "weight"}
                             for name in self.loss_weights}
        self.rendering, self.schedule = rendering, schedule
        self.n_iters = schedule.n_iters
        self.lr_factor = schedule.lr_decay_ratio ** (1.0 / schedule.n_iters)
        self.generator = torch.Generator().manual_seed(seed)            # stratified jitter along the rays
        self.joint = False                                                # appearance fine-tuned (phase 2)
        self.optimizer: torch.optim.Optimizer | None = None

    def require(self, parts: Mapping[str, nn.Module | None]) -> None:
        """Refuse a loss term whose part is switched off: ``parts`` maps each loss name to the part it needs."""
        for loss, part in parts.items():
            if loss in self.loss_weights and part is None:
                raise ConfigError(f"model.losses.{loss}", f"{self.name}'s {loss} term needs a part that is switched "
                                                          f"off (null in model): switch the term off too")

    # --- what a method provides ----------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """The method's trainable modules by name (checkpointed, switched to eval mode for evaluation)."""
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        """Optimizer groups of the method's own modules (the appearance groups are added by the base)."""
        raise NotImplementedError

    def outputs(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        """What the losses read, from one supervision batch (renders with gradients)."""
        raise NotImplementedError

    def losses(self, batch: dict[str, Any], outputs: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """The unweighted scalar terms of the switched-on losses (``self.loss_weights``), in summation order."""
        raise NotImplementedError

    def render(self, rays: Tensor, train: bool = False) -> dict[str, Tensor]:
        raise NotImplementedError

    def extra_state(self) -> dict:
        """Method state beyond modules, field, optimizer and supervision, saved with them (LERF records what shaped
        its parameters, and checks it in its own load_state_dict)."""
        return {}

    # --- shared pieces -------------------------------------------------------------------------------------------
    def shaded_samples(self, rays: Tensor, train: bool) -> dict[str, Tensor]:
        """Frozen-density samples of rays ``[R, 6]`` (:func:`laser.rendering.ray_weights`) plus ``shaded``
        ``[R, S]``: the points heavy enough to be given semantics (3D-OVS / Laser's app_mask)."""
        r = self.rendering
        with torch.no_grad():
            samples = ray_weights(self.field, rays, self.scene.near_far, r.n_samples, r.distance_scale,
                                  self.generator if train else None)
        samples["shaded"] = samples["weights"] > r.weight_threshold
        return samples

    # --- the step ------------------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, Tensor]:
        """One step: sample and teach, outputs, weighted loss terms, a guarded optimiser step. Returns the loss and
        each term, unweighted, as 0-dim tensors on the device: nothing here waits for the device, so the caller
        reads them (and :meth:`check_finite`) once per logging interval."""
        if step == self.schedule.joint_start_iter:
            self.check_finite()                        # the guard's record is per optimiser (once per run: a sync)
            self.joint = True
            self.reset_optimizer()
        with torch.no_grad():
            batch = self.supervision.sample(self.teacher)
        terms = self.losses(batch, self.outputs(batch, step), step)
        loss = sum(self.loss_weights[k] * v for k, v in terms.items())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.guard_step(step, terms, loss)
        self.optimizer.step()
        for group in self.optimizer.param_groups:
            group["lr"] *= self.lr_factor
        return {**{k: v.detach() for k, v in terms.items()}, "loss": loss.detach()}

    def guard_step(self, step: int, terms: dict[str, Tensor], loss: Tensor) -> None:
        """Make the optimiser skip a step whose loss terms or gradients are not finite, on the device: the fused
        Adam reads ``found_inf`` (as under a gradient scaler) and leaves parameters and moments untouched. The first
        such step's figures are kept for :meth:`check_finite`."""
        figures = [terms[k].detach() if k in terms else loss.new_zeros(()) for k in self.loss_weights]
        grads = [p.grad if p.grad is not None else p.new_zeros(()) for p in self._guarded_params]
        norms = torch._foreach_norm(grads) if grads else []                      # one fused call for all of them
        values = torch.stack([*figures, loss.detach(), *norms]).float()           # [terms + 1 + parameters]
        bad = ~torch.isfinite(values).all()
        self.optimizer.found_inf = bad.float()
        first = bad & (self._bad_step < 0)
        self._bad_step = torch.where(first, step, self._bad_step)
        self._bad_values = torch.where(first, values, self._bad_values)

    def check_finite(self) -> None:
        """Raise for the first step of this optimiser whose loss terms or gradients were not finite (that step was
        skipped), naming the first non-finite term (the culprit, rather than the sum it spoils) or else the first
        parameter whose gradient is. Waits for the device."""
        step = int(self._bad_step)
        if step < 0:
            return
        values = self._bad_values.tolist()
        names = [*self.loss_weights, "loss"]
        term = next(((n, v) for n, v in zip(names, values) if not math.isfinite(v)), None)
        if term is not None:
            raise NonFiniteError(step, f"the loss term '{term[0]}' is {term[1]}")
        bad = next(n for n, v in zip(self._guarded_names, values[len(names):]) if not math.isfinite(v))
        raise NonFiniteError(step, f"the gradient of {bad} is not finite (the loss terms are)")

    def reset_optimizer(self) -> None:
        """Phase 1: the method's modules. Phase 2 (``joint``, learning rates reset): the appearance too."""
        groups = self.param_groups()
        if self.joint:
            app = self.field.appearance_param_groups(self.schedule.lr_app_grid, self.schedule.lr_app_network)
            for group in app:
                for p in group["params"]:
                    p.requires_grad_(True)
            groups += app
        self.optimizer = adam(groups)
        names = {id(p): f"{k}.{n}" for k, m in {**self.modules(), "field": self.field}.items()
                 for n, p in m.named_parameters()}
        self._guarded_params = [p for group in groups for p in group["params"]]
        self._guarded_names = [names[id(p)] for p in self._guarded_params]
        # The guard's record of the first skipped step (guard_step), sized for these parameters.
        self._bad_step = torch.tensor(-1, device=self.device)
        self._bad_values = torch.zeros(len(self.loss_weights) + 1 + len(self._guarded_params), device=self.device)

    # --- evaluation ----------------------------------------------------------------------------------------------
    def query_features(self, features: Tensor) -> Tensor:
        """The rendered features ``[R, D]`` as compared with the text embeddings at query time."""
        return features

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """The method's modules in eval mode for the block, each back in its previous mode after it (even on error):
        the adapter's centring statistics must not move while views are scored. The field is frozen for the block
        (:meth:`~laser.fields.base.RadianceField.frozen`: its caches may serve the lookups)."""
        modes = {name: module.training for name, module in self.modules().items()}
        for module in self.modules().values():
            module.eval()
        try:
            with self.field.frozen():
                yield
        finally:
            for name, module in self.modules().items():
                module.train(modes[name])

    def eval_rays(self, view: int, stride: int = 1) -> Tensor:
        """Rays ``[h, w, 6]`` of every ``stride``-th pixel (both axes) of an evaluation view, on the device."""
        scene = self.eval_scene
        return scene.rays(view).reshape(scene.height, scene.width, 6)[::stride, ::stride].to(self.device)

    # --- queries: one render of a view, then any phrase (evaluation is the query of the class prompts) -----------
    def query_render(self, rays: Tensor) -> dict[str, Tensor]:
        """What a query needs of rays ``[R, 6]`` that does not depend on the phrase, one row per ray: ``rgb``
        ``[R, 3]`` and here the unit query features ``features`` ``[R, D]``. Rendered once per view and cached
        (:class:`laser.query.SceneQuery`); :meth:`query_scores` turns it into scores for any phrase."""
        out = self.render(rays)
        return {"features": F.normalize(self.query_features(out["features"]), dim=-1), "rgb": out["rgb"]}

    def query_scores(self, rendered: dict[str, Tensor], text: Tensor) -> Tensor:
        """Scores ``[N, Q]`` of the ``N`` rays of one whole view (as :meth:`query_render` gave them) for phrases of
        unit text embeddings ``text`` ``[Q, D]``: here the cosine similarity, no temperature (§10). Higher is more
        relevant; the argmax over phrases is the segmentation."""
        return rendered["features"] @ text.T

    def render_view(self, rays: Tensor) -> dict[str, Tensor]:
        """:meth:`query_render` of rays ``[h, w, 6]`` in chunks of ``rendering.chunk``, in eval mode; each entry
        ``[h * w, ...]``."""
        with self.evaluating():
            return render_in_chunks(self.query_render, rays.reshape(-1, 6), self.rendering.chunk, keys=None)

    @torch.no_grad()
    def class_scores(self, view: int, stride: int = 1) -> tuple[Tensor, Tensor]:
        """Per-class scores ``[h, w, C]`` (argmax is the segmentation) and the colour render ``[h, w, 3]`` of an
        evaluation view, at every ``stride``-th pixel (1: the full view; more for quick looks during
        experiments): the query of the class prompts."""
        rays = self.eval_rays(view, stride)
        rendered = self.render_view(rays)
        scores = self.query_scores(rendered, self.text)
        return scores.reshape(*rays.shape[:2], -1), rendered["rgb"].reshape(*rays.shape[:2], 3)

    def evaluate(self, out_dir: str | Path, extra: dict[str, float] | None = None) -> dict[str, float]:
        """3D-OVS metrics on the annotated views (§11), and in ``metrics.json`` also the LangSplat per-query
        protocol's (:func:`~laser.evaluation.metrics.per_query_metrics`); overlays with a legend and per-class
        relevancy maps (colour-mapped per map) in ``out_dir``. A scene with class prompts but no masks (a user's
        capture with only ``classes.txt``) gets the pictures of its test views and no scores. ``extra`` columns
        (the training cost) join the metrics, returned and in ``metrics.json``, which is written once."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        annotated = bool(self.eval_scene.annotations)
        views = self.eval_scene.annotated_views if annotated else list(self.eval_scene.test_views)
        palette = class_palette(len(self.eval_scene.classes))
        key = legend(self.eval_scene.classes, palette)
        truths, scores = [], []
        with self.evaluating():
            for view in views:
                score, rgb = self.class_scores(view)
                scores.append(score.cpu())
                save_png(out_dir / f"segmentation_{view:03d}.png",
                         with_legend(segmentation_overlay(rgb.cpu(), score.argmax(-1).cpu(), palette), key))
                for index, name in enumerate(self.eval_scene.classes):
                    save_png(out_dir / "relevancy" / f"{view:03d}_{name}.png",
                             relevancy_map(score[..., index].cpu()))
        # The teacher's stored bytes ride along: the comparison tables set them beside the scores.
        metrics = {"feature_bytes": self.teacher.stored_bytes(), **(extra or {})}
        saved = {"metrics": metrics, "views": views, "classes": self.eval_scene.classes}
        if annotated:
            truths = [self.eval_scene.annotations[view] for view in views]
            result = segmentation_metrics(truths, scores, self.eval_scene.score_unlabelled)
            per_query = per_query_metrics(truths, scores, PER_QUERY_THRESHOLD)
            metrics = {"miou": result["miou"], "accuracy": result["accuracy"], **metrics}
            saved |= {"metrics": metrics, "per_view_iou": result["per_view_iou"],
                      "per_query": {"threshold": PER_QUERY_THRESHOLD, "miou": per_query["miou"],
                                    "per_phrase_iou": dict(zip(self.eval_scene.classes,
                                                               per_query["per_phrase_iou"]))}}
        write_atomic(out_dir / "metrics.json", json.dumps(saved, indent=2))
        return metrics

    # --- checkpoints ---------------------------------------------------------------------------------------------
    def identity(self) -> dict:
        return {"stage": self.name, "layout": LAYOUT, "scene": self.scene.name, "classes": self.scene.classes,
                "n_iters": self.n_iters}

    def state_dict(self) -> dict:
        return {"modules": {k: m.state_dict() for k, m in self.modules().items()},
                "field": self.field.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "teacher_rng": self.teacher.rng_state(),
                "supervision": self.supervision.state_dict(), "joint": self.joint, **self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        for key, module in self.modules().items():
            module.load_state_dict(state["modules"][key])
        self.field.load_state_dict(state["field"])
        self.joint = state["joint"]
        self.reset_optimizer()
        load_adam_state(self.optimizer, state["optimizer"], self.field)
        self.generator.set_state(state["generator"])
        self.teacher.set_rng_state(state["teacher_rng"])
        self.supervision.load_state_dict(state["supervision"])
