"""Evaluate trained runs and write the tables.

    python eval.py run=runs/synthetic                  # one run folder
    python eval.py run=multirun/2026-11-21_10-00-00    # a sweep: one row per job

Each run is rebuilt from the config Hydra saved beside it (``.hydra/config.yaml``) and its last checkpoint, the
test views are rendered, and ``<out>/results.{md,csv,json}`` hold one row per run and a mean row.
"""

from __future__ import annotations

from pathlib import Path

import laser  # noqa: F401  (makes torchvision importable on CPU torch before anything imports it)
import hydra
from omegaconf import DictConfig, OmegaConf

import train
from laser.errors import CheckpointError
from laser.evaluation.tables import write_tables
from laser.training import checkpoint
from laser.training.run import resolve_device


def find_runs(folder: Path) -> list[Path]:
    """The run folders at or below ``folder``: those with a saved config and a checkpoint folder."""
    if not folder.is_dir():
        raise CheckpointError(folder, "run folder not found")
    runs = sorted({p.parent.parent for p in folder.glob("**/.hydra/config.yaml")
                   if (p.parent.parent / "checkpoints").is_dir()})
    if not runs:
        raise CheckpointError(folder, "no trained run here (expected .hydra/config.yaml and checkpoints/)")
    return runs


def run_label(run: Path, root: Path) -> str:
    overrides = run / ".hydra" / "overrides.yaml"
    if run != root and overrides.is_file():
        return ",".join(OmegaConf.load(overrides)) or run.name
    return run.name


def evaluate_run(run: Path, out: Path, device) -> dict[str, float]:
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    stage, identity = train.build_reconstruction(cfg, device)
    path = run / "checkpoints" / f"{stage.name}.pt"
    saved = checkpoint.load(path)
    checkpoint.check_compatible(path, saved, identity)
    stage.load_state_dict(saved["stage"])
    metrics = stage.evaluate(out)
    return {"scene": cfg.scene.name, "step": saved["step"], **metrics}


@hydra.main(version_base=None, config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    root, out = Path(cfg.run), Path(cfg.out)
    device = resolve_device(cfg.device)
    rows = []
    for run in find_runs(root):
        label = run_label(run, root)
        rows.append({"run": label, **evaluate_run(run, out / label.replace("/", "_"), device)})
    print(write_tables(rows, out), end="")


if __name__ == "__main__":
    main()
