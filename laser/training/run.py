"""Run set-up shared by every stage: seeds, device, run folder, logger, checkpoint paths."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from laser.instantiate import instantiate
from laser.training.loggers import Logger


@dataclass
class Run:
    dir: Path
    device: torch.device
    logger: Logger

    def checkpoint_path(self, stage: str) -> Path:
        return self.dir / "checkpoints" / f"{stage}.pt"

    def test_outputs(self, stage: str) -> Path:
        """The final evaluation of a stage: ``metrics.json`` and its pictures."""
        return self.dir / stage / "test"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup_run(cfg: DictConfig, run_dir: str | Path | None = None) -> Run:
    """``run_dir`` defaults to Hydra's output folder (``runs/<scene>``, or one folder per job in a sweep)."""
    seed_everything(cfg.seed)
    run_dir = Path(run_dir if run_dir is not None else HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Built as a partial: passed through instantiate, the run's config would itself be instantiated.
    make_logger = instantiate(cfg.logger, _partial_=True)
    logger = make_logger(run_dir=str(run_dir), run_config=OmegaConf.to_container(cfg, resolve=True))
    return Run(dir=run_dir, device=resolve_device(cfg.device), logger=logger)
