"""Loggers behind one small interface: scalars and images by step. W&B (offline by default) or none."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np


class Logger:
    """Does nothing; the interface every logger implements (``logger=none``)."""

    def __init__(self, run_dir: str | None = None, run_config: dict | None = None):
        pass

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_images(self, images: dict[str, np.ndarray], step: int) -> None:
        """``images``: name -> ``[H, W, 3]`` uint8."""

    def finish(self) -> None:
        pass


class WandbLogger(Logger):
    """Weights & Biases; ``mode=offline`` needs no account and writes ``<run_dir>/wandb/offline-run-*``
    (upload later with ``wandb sync``)."""

    def __init__(self, project: str, run_dir: str, mode: str = "offline", name: str | None = None,
                 run_config: dict | None = None, tags: list[str] | None = None):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        # One W&B run per run folder, continued when training resumes.
        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        self.run = wandb.init(project=project, dir=str(run_dir), mode=mode, name=name, config=run_config,
                              tags=tags, id=run_id, resume="allow")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_images(self, images: dict[str, np.ndarray], step: int) -> None:
        self.run.log({k: self._wandb.Image(v) for k, v in images.items()}, step=step)

    def finish(self) -> None:
        self.run.finish()
