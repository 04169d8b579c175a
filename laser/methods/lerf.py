"""LERF (Kerr et al., ICCV 2023; LASER.md §14.6) as a stage-2 method: a language field over the frozen radiance
field, supervised by multi-scale crop pyramids of CLIP embeddings, queried by relevancy.

Training step (rays and targets from :class:`~laser.methods.supervision.ScaleRays`): ``batch_size`` rays uniformly
over the training views (a random view, then a random pixel); per ray an image-plane scale
``s_img ~ U(scale_min, scale_max)`` (fractions of the image height: the teacher pyramid's range). The target is the
teacher's trilinear pyramid embedding at that pixel and scale. Every shaded sample gets the world-space size of that
crop at its distance from the camera (:mod:`laser.modules.frustum_scale`); ``F_lang`` is composited with the frozen
field's weights and L2-normalised; the loss is ``1 - cos``. With DINO weights,
``F_dino`` is composited too and regressed on the DINO patch features at the pixel (squared error summed over
channels, as LERF). Density and colour stay frozen: LERF's language gradients never reach the radiance field, so
there is no joint fine-tuning (``schedule.joint_start_iter`` is null).

Query (:meth:`LerfSegmentation.query_render`, then :meth:`~LerfSegmentation.query_scores` for any phrase): the
language field is rendered at ``query_scales`` world scales evenly spaced over ``[0, query_scale_max]`` (scene
units; see :mod:`laser.modules.frustum_scale` for what a unit is on forward-facing scenes), after discarding the
samples seen by fewer than ``min_views`` training views. Each class's relevancy is computed against the canonical
phrases at every scale; per view and class the scale whose map peaks highest is kept, and each pixel takes the class
of highest relevancy (the 3D-OVS protocol).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laser.errors import ConfigError
from laser.methods.segmentation import SegmentationStage
from laser.modules.frustum_scale import sample_scales
from laser.modules.language_field import LanguageField
from laser.modules.relevancy_query import relevancy, select_scale, visible_views
from laser.rendering import composite_packed


class LerfSegmentation(SegmentationStage):
    """The LERF stage: the part ``language_field`` (:class:`~laser.modules.language_field.LanguageField`, LERF's
    hash grid and MLP sizes by default), supervised through :class:`~laser.methods.supervision.ScaleRays`; loss terms
    ``language`` and ``dino``.

    Args (beyond :class:`~laser.methods.segmentation.SegmentationStage`'s):
        language_field: partial of the field, completed with the box, the appearance width, the text width and
            the DINO width (None without DINO weights).
        lr, adam_eps: the language field's rate (decayed to ``lr * lr_decay_ratio`` over ``n_iters``) and Adam's
            epsilon.
        query_scales, query_scale_max: scales rendered per query, evenly spaced over ``[0, query_scale_max]`` (scene
            units; LERF: 30 over 0-2 m).
        min_views: samples seen by fewer training views are discarded at query time.
    """

    name = "lerf"
    loss_names = ("language", "dino")

    def __init__(self, *, language_field: Callable[..., LanguageField], lr: float = 1e-2, adam_eps: float = 1e-15,
                 query_scales: int = 30, query_scale_max: float = 2.0, min_views: int = 5, **stage):
        if query_scales <= 0 or query_scale_max < 0 or min_views < 0:
            raise ConfigError("model", f"LERF needs query_scales > 0, query_scale_max >= 0 and min_views >= 0; got "
                                       f"{query_scales}, {query_scale_max}, {min_views}")
        super().__init__(**stage)
        self.canonical = stage["text"].canonical.to(self.device)         # [4, D]
        self.lr, self.adam_eps = lr, adam_eps
        self.query_scales = torch.linspace(0.0, query_scale_max, query_scales).tolist()
        self.min_views = min_views
        self.language = language_field(aabb=self.field.aabb, app_dim=self.field.app_dim, out_dim=self.text.shape[1],
                                       dino_dim=self.supervision.dino_dim).to(self.device)
        self.reset_optimizer()

    def modules(self) -> dict[str, nn.Module]:
        return {"language_field": self.language}

    def param_groups(self) -> list[dict]:
        # nerfstudio's (and LERF's) Adam epsilon: hash-table entries see tiny, sparse gradients.
        return [{"params": list(self.language.parameters()), "lr": self.lr, "eps": self.adam_eps}]

    # --- checkpoints ---------------------------------------------------------------------------------------------
    def _build(self) -> dict:
        """What shapes the trainable parameters beyond the config: DINO weights found or not, hash backend."""
        return {"dino": self.supervision.dino_dim is not None, "encoding_backend": self.language.encoding_backend}

    def extra_state(self) -> dict:
        return {"build": self._build()}

    def load_state_dict(self, state: dict) -> None:
        if state["build"] != self._build():
            raise ConfigError("model.supervision.use_dino",
                              f"this LERF checkpoint was trained with {state['build']} but this run has "
                              f"{self._build()}: resume where the DINO weights are found (or not) as they were "
                              f"(model.supervision.use_dino, model.supervision.dino_weights) and with the same "
                              f"model.language_field.backend")
        super().load_state_dict(state)

    # --- training ------------------------------------------------------------------------------------------------
    def outputs(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        """Unit ``language`` ``[N, D]`` of the batch's rays, each sample at the world-space size of the ray's crop,
        and with DINO ``dino`` ``[N, K]``."""
        samples = self.shaded_samples(batch["rays"], train=True)
        weights, shaded = samples["weights"], samples["shaded"]
        ray = shaded.nonzero()[:, 0]
        xyz = samples["points"][shaded]
        features = self.language.backbone(xyz, self.field)
        scale = sample_scales(self.scene, xyz, batch["centres"][ray], batch["image_scale"][ray])
        out = {"language": F.normalize(composite_packed(weights, self.language.language(features, scale), shaded),
                                       dim=-1)}
        if "dino" in batch:
            out["dino"] = composite_packed(weights, self.language.dino(features), shaded)
        return out

    def losses(self, batch: dict[str, Any], out: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        terms = {}
        if "language" in self.loss_weights:
            terms["language"] = (1 - (out["language"] * F.normalize(batch["language"], dim=-1)).sum(-1)).mean()
        if "dino" in out and "dino" in self.loss_weights:
            terms["dino"] = (out["dino"] - batch["dino"]).square().sum(-1).mean()
        return terms

    # --- query ---------------------------------------------------------------------------------------------------
    def render(self, rays: Tensor, train: bool = False) -> dict[str, Tensor]:
        """Colour ``[R, 3]`` and the relevancy ``[R, S, C]`` of every class at each of the ``S`` query scales, the
        language field evaluated per point: the reference of :meth:`query_render` and :meth:`query_scores`.

        The language field is evaluated once per scale and reused for all classes. Samples seen by fewer than
        ``min_views`` training views carry no language (their weight is dropped, not redistributed: the rendered
        embedding is normalised anyway).
        """
        weights, kept, features, rgb = self._query_points(rays, train)
        maps = []
        for scale in self.query_scales:
            language = self.language.language(features, features.new_full((len(features),), scale))
            maps.append(relevancy(F.normalize(composite_packed(weights, language, kept), dim=-1), self.text,
                                  self.canonical))
        return {"rgb": rgb, "relevancy": torch.stack(maps, dim=1)}

    def query_render(self, rays: Tensor) -> dict[str, Tensor]:
        """What a query needs of rays ``[R, 6]``, for any phrase: ``rgb`` ``[R, 3]``, and per query scale
        ``hidden`` ``[R, S, H]`` (the language MLP's last hidden layer, composited), ``norm`` ``[R, S]`` (the
        length of the rendered embedding) and ``canonical`` ``[R, S]`` (its largest cosine to a canonical phrase).

        The MLP's last layer ``W h + b`` is linear, so the rendered embedding is ``W (sum_i w_i h_i) + acc b``
        (:func:`~laser.rendering.composite_affine`): compositing the hidden layer and applying ``W`` per ray is exact
        (:meth:`render` is the per-point reference; ``tests/test_lerf.py`` compares the two). A phrase ``q`` then
        only needs ``(h . W^T q + acc b . q) / norm`` (:meth:`query_scores`)."""
        weights, kept, features, rgb = self._query_points(rays, False)
        net = self.language.language_net
        layers, last = net[:-1], net[-1]
        hiddens = []
        for scale in self.query_scales:
            inputs = torch.cat([features, features.new_full((len(features), 1), scale)], dim=-1)
            hiddens.append(composite_packed(weights, layers(inputs), kept))
        hidden = torch.stack(hiddens, dim=1)                                             # [R, S, H]
        acc = composite_packed(weights, weights.new_ones(len(features), 1), kept)       # [R, 1]
        embedding = (last(hidden) + (acc - 1)[:, None] * last.bias).masked_fill(acc[:, None] == 0, 0.0)
        norm = embedding.norm(dim=-1)                                                   # [R, S]
        canonical = (embedding @ self.canonical.T).amax(dim=-1) / norm.clamp(min=1e-12)
        return {"rgb": rgb, "hidden": hidden, "acc": acc[:, 0], "norm": norm, "canonical": canonical}

    def query_scores(self, rendered: dict[str, Tensor], text: Tensor) -> Tensor:
        """LERF's relevancy ``[N, Q]`` of the rays of one whole view to each phrase, at the phrase's own scale: per
        phrase, the query scale whose relevancy map over the view holds the highest value (LERF's rule; LERF's code
        applies it per batch of rays, which makes the chosen scale depend on the batching). Memory: ``N * S * Q``
        floats."""
        last = self.language.language_net[-1]
        projected = text @ last.weight                                                  # [Q, H]: W^T q
        dots = rendered["hidden"] @ projected.T + rendered["acc"][:, None, None] * (text @ last.bias)  # [N, S, Q]
        cosine = dots / rendered["norm"].clamp(min=1e-12)[..., None]
        maps = torch.sigmoid(cosine - rendered["canonical"][..., None])                 # relevancy(), per scale
        return select_scale(maps.transpose(0, 1))[1]

    def _query_points(self, rays: Tensor, train: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """What both query paths start from: the weights ``[R, S]``, the mask ``[R, S]`` of the points that carry
        language (shaded and seen by ``min_views`` training views), their backbone features ``[P, E]`` and the
        colour render ``[R, 3]``."""
        samples = self.shaded_samples(rays, train)
        weights, shaded = samples["weights"], samples["shaded"]
        xyz = samples["points"][shaded]
        rgb = composite_packed(weights, self.field.color(self.field.app_features(xyz), samples["viewdirs"][shaded]),
                               shaded)
        kept = self._seen(xyz, shaded)
        return weights, kept, self.language.backbone(xyz[kept[shaded]], self.field), rgb

    def _seen(self, xyz: Tensor, shaded: Tensor) -> Tensor:
        """``shaded`` ``[R, S]`` without the points ``xyz`` ``[P, 3]`` (those of ``shaded``) that fewer than
        ``min_views`` training views see. Visibility is computed with the training scene's intrinsics; the NDC warp
        and the projection depend only on ``f / W`` and ``f / H``, so rays of the evaluation scene map the same."""
        scene = self.scene
        seen = visible_views(scene.world_points(xyz), self.supervision.view_c2w, scene.fx, scene.fy, scene.height,
                             scene.width) >= self.min_views
        kept = shaded.clone()
        kept[shaded] = seen
        return kept
