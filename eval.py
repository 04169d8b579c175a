"""Evaluate trained runs and write the tables.

    python eval.py run=runs/synthetic                  # one run folder
    python eval.py run=multirun/2026-11-21_10-00-00    # a sweep: one row per job

Each run is rebuilt from the config Hydra saved beside it (``.hydra/config.yaml``) and its checkpoints: the test
views are re-rendered (PSNR, SSIM) and, where stage 2 was trained, the annotated views are segmented (3D-OVS mIoU
and accuracy, overlays and per-class relevancy maps). ``<out>/results.{md,csv,json}`` hold one row per run; for a
sweep, ``<out>/miou_by_scene.*`` has one row per configuration and one column per scene plus their mean.
"""

from __future__ import annotations

from pathlib import Path

import laser  # noqa: F401  (makes torchvision importable on CPU torch before anything imports it)
import hydra
from omegaconf import DictConfig, OmegaConf

import train
from laser.errors import CheckpointError
from laser.evaluation.tables import pivot, write_tables
from laser.methods.laser import LaserSegmentation
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


def evaluate_run(run: Path, out: Path, device) -> dict:
    """Rebuild a run's stages from its saved config and checkpoints and evaluate each one that was trained."""
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    reconstruction, identity = train.build_reconstruction(cfg, device)
    saved = checkpoint.restore_stage(reconstruction, run / "checkpoints" / f"{reconstruction.name}.pt", identity)
    row = {"scene": cfg.scene.name, "step": saved["step"], **reconstruction.evaluate(out / reconstruction.name)}
    if reconstruction.scene.classes and (run / "checkpoints" / f"{LaserSegmentation.name}.pt").is_file():
        prepared = train.prepare_segmentation(cfg, reconstruction.scene)
        segmentation, identity = train.build_segmentation(cfg, prepared, reconstruction.field, device)
        checkpoint.restore_stage(segmentation, run / "checkpoints" / f"{segmentation.name}.pt", identity)
        row.update(segmentation.evaluate(out / segmentation.name))
    return row


def configuration(label: str) -> str:
    """A sweep job's overrides without its scene: the row of the configuration x scene table."""
    return ",".join(o for o in label.split(",") if not o.startswith("scene=")) or "default"


@hydra.main(version_base=None, config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    root, out = Path(cfg.run), Path(cfg.out)
    device = resolve_device(cfg.device)
    rows = []
    for run in find_runs(root):
        label = run_label(run, root)
        rows.append({"run": label, **evaluate_run(run, out / label.replace("/", "_"), device)})
    print(write_tables(rows, out), end="")
    if len(rows) > 1 and "miou" in rows[0]:
        table = pivot([{**r, "configuration": configuration(r["run"])} for r in rows], "configuration", "scene", "miou")
        print(write_tables(table, out, name="miou_by_scene", with_mean=False), end="")


if __name__ == "__main__":
    main()
