"""Build a scene from its Hydra config (``conf/scene/*.yaml``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from laser.data.scene import Scene
from laser.errors import DataError
from laser.instantiate import instantiate


def load_scene(cfg: DictConfig, downsample: float) -> Scene:
    """Generate the scene first if its config says how (the synthetic benchmark), then load it at
    ``1/downsample`` resolution. A missing folder is reported with where the data comes from."""
    if cfg.get("generate") is not None:
        instantiate(cfg.generate)
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(root, f"scene folder not found. {cfg.get('source', '')}".strip())
    return instantiate(cfg.loader, downsample=downsample)
