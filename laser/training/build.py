"""The composition root: every stage, teacher and text embedding a run needs, built from its Hydra config.

``train.py``, ``eval.py`` and the experiments build through these functions and nothing else. Whatever can be
refused without training is refused here, before stage 1 starts: impossible step counts, chunks and crops, a
teacher of another interface than the method's supervision reads, missing CLIP weights or labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from laser.data.scene import Scene
from laser.data.scenes import load_scene
from laser.errors import ConfigError
from laser.instantiate import instantiate
from laser.language.teachers.base import Teacher
from laser.language.text import SceneText, TextEncoder, encode_scene_text
from laser.methods.reconstruction import Reconstruction
from laser.methods.segmentation import SegmentationStage


@dataclass
class Prepared:
    """What stage 2 needs besides the trained field."""

    scene: Scene           # at the supervision's resolution (scene.downsample.patch)
    eval_scene: Scene      # at the evaluation's resolution (scene.downsample.eval)
    text: SceneText
    teacher: Teacher       # prepared for ``scene``
    encoder: TextEncoder   # the run's CLIP text encoder: any other phrase is embedded as the classes were


def build_reconstruction(cfg: DictConfig, device: torch.device) -> tuple[Reconstruction, dict]:
    """Stage 1 on the scene at its reconstruction resolution, and the identity its checkpoint must match."""
    if cfg.reconstruction.n_iters < 1:
        raise ConfigError("reconstruction.n_iters", f"a stage needs at least one training step, not "
                                                    f"{cfg.reconstruction.n_iters}")
    if cfg.reconstruction.eval_chunk < 1:
        raise ConfigError("reconstruction.eval_chunk", f"a render call needs at least one ray, not "
                                                       f"{cfg.reconstruction.eval_chunk}")
    scene = load_scene(cfg.scene, cfg.scene.downsample.reconstruction)
    field = instantiate(cfg.field, aabb=scene.aabb.tolist())
    # Objects are passed to a partial: instantiate would try to turn them into configs.
    stage = instantiate(cfg.reconstruction, _partial_=True)(scene=scene, field=field, device=device)
    identity = {**stage.identity(), "field_config": OmegaConf.to_container(cfg.field, resolve=True),
                "schedule": OmegaConf.to_container(cfg.reconstruction, resolve=True), "seed": cfg.seed}
    return stage, identity


def check_teacher(cfg: DictConfig) -> None:
    """Refuse a teacher whose class does not offer the interface the method's supervision reads."""
    wanted = get_class(cfg.model.supervision._target_).teacher_type
    given = get_class(cfg.teacher._target_)
    if not issubclass(given, wanted):
        method = get_class(cfg.model._target_).name
        summary = wanted.__doc__.splitlines()[0].rstrip(".")
        raise ConfigError("teacher", f"{method} learns from a {wanted.__name__} ({summary}); "
                                     f"{given.__name__} is not one. Choose the teacher's source with "
                                     f"teacher_source=clip|oracle (its class follows the method), or "
                                     f"teacher=<source>/{method}")


def prepare_segmentation(cfg: DictConfig, loaded: Scene) -> Prepared:
    """The scene at the supervision and evaluation resolutions, the text embeddings and the prepared teacher,
    after every check that needs no training. ``loaded`` is the scene stage 1 uses; it is reused wherever a
    resolution matches instead of read again."""
    for key in ("schedule", "rendering"):                              # their constructors refuse bad values
        instantiate(cfg.model[key])
    check_teacher(cfg)
    ds = cfg.scene.downsample
    scenes = {ds.reconstruction: loaded}

    def at(downsample: float) -> Scene:
        if downsample not in scenes:
            scenes[downsample] = load_scene(cfg.scene, downsample)
        return scenes[downsample]

    scene = at(ds.patch)
    supervision = OmegaConf.to_container(cfg.model.supervision, resolve=True)
    get_class(supervision.pop("_target_")).check(scene, **{k: v for k, v in supervision.items() if k != "_partial_"})
    encoder = TextEncoder(instantiate(cfg.clip))
    text = encode_scene_text(encoder, scene.classes, cfg.model.get("prompt_repeats", 1))
    teacher = instantiate(cfg.teacher)
    teacher.prepare(scene, text.embeddings)
    return Prepared(scene=scene, eval_scene=at(ds.eval), text=text, teacher=teacher, encoder=encoder)


def build_segmentation(cfg: DictConfig, prepared: Prepared, field, device: torch.device
                       ) -> tuple[SegmentationStage, dict]:
    """Stage 2 on the stage-1 field, and the identity its checkpoint must match."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("prompt_repeats", None)                                   # read by prepare_segmentation
    stage = instantiate(model, _partial_=True, _convert_="all")(
        scene=prepared.scene, eval_scene=prepared.eval_scene, text=prepared.text, teacher=prepared.teacher,
        field=field, device=device)
    identity = {**stage.identity(), "model_config": OmegaConf.to_container(cfg.model, resolve=True),
                "teacher_config": OmegaConf.to_container(cfg.teacher, resolve=True)}
    return stage, identity
