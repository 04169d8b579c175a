"""A trained run rebuilt from its folder: the config Hydra saved beside it and its stages' checkpoints.

``eval.py`` and the tools that use a trained scene (:mod:`laser.query`, :mod:`laser.viewer`, :mod:`laser.export`,
:mod:`laser.video`) load a run through :func:`load_trained` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from laser.errors import CheckpointError
from laser.methods.reconstruction import Reconstruction
from laser.methods.segmentation import SegmentationStage
from laser.training import checkpoint
from laser.training.build import Prepared, build_reconstruction, build_segmentation, prepare_segmentation
from laser.training.loggers import Logger
from laser.training.run import Run


@dataclass
class TrainedRun:
    folder: Path
    cfg: DictConfig
    reconstruction: Reconstruction
    costs: dict[str, dict]                         # stage name -> the training cost its checkpoint recorded
    steps: dict[str, int]                          # stage name -> the step its checkpoint was written at
    checkpoints: list[Path]                        # the files the stages were read from
    segmentation: SegmentationStage | None = None  # None: stage 2 was not trained (or the scene has no classes)
    prepared: Prepared | None = None               # stage 2's scenes, text encoder and teacher


def load_trained(folder: str | Path, device: torch.device, segmentation: bool = True,
                 require_segmentation: bool = False) -> TrainedRun:
    """Rebuild the stages of the run in ``folder`` from its saved config and load their checkpoints (each checked
    to belong to that config). Stage 2 is loaded where ``segmentation`` and its checkpoint exists;
    ``require_segmentation`` refuses a run without one."""
    folder = Path(folder)
    config = folder / ".hydra" / "config.yaml"
    if not config.is_file():
        raise CheckpointError(folder, "not a run folder (no .hydra/config.yaml): pass the folder train.py wrote, "
                                      "e.g. run=runs/synthetic")
    cfg = OmegaConf.load(config)
    run = Run(dir=folder, device=device, logger=Logger())
    reconstruction, identity = build_reconstruction(cfg, device)
    path = run.checkpoint_path(reconstruction.name)
    saved = checkpoint.restore_stage(reconstruction, path, identity)
    trained = TrainedRun(folder=folder, cfg=cfg, reconstruction=reconstruction,
                         costs={reconstruction.name: saved["cost"]}, steps={reconstruction.name: saved["step"]},
                         checkpoints=[path])
    path = run.checkpoint_path(get_class(cfg.model._target_).name)
    if segmentation and reconstruction.scene.classes and path.is_file():
        trained.prepared = prepare_segmentation(cfg, reconstruction.scene)
        stage, identity = build_segmentation(cfg, trained.prepared, reconstruction.field, device)
        saved = checkpoint.restore_stage(stage, path, identity)
        trained.segmentation = stage
        trained.costs[stage.name], trained.steps[stage.name] = saved["cost"], saved["step"]
        trained.checkpoints.append(path)
    elif require_segmentation:
        why = ("the scene has no classes.txt" if not reconstruction.scene.classes
               else "stage 2 has not been trained here")
        raise CheckpointError(path, f"no stage-2 checkpoint ({why}): train it with python train.py first")
    # A loaded run is used, not trained: frozen, the field keeps its dense lookup grids from one render to the next.
    reconstruction.field.requires_grad_(False)
    return trained
