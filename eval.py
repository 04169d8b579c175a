"""Evaluate trained runs and write the tables.

    python eval.py run=runs/synthetic                  # one run folder
    python eval.py run=multirun/2026-11-21_10-00-00    # a sweep: one row per job
    python eval.py run=multirun/... render=false       # tabulate the metrics the jobs recorded, render nothing

Each run is rebuilt from the config Hydra saved beside it (``.hydra/config.yaml``) and its checkpoints: the test
views are re-rendered (PSNR, SSIM) and, where stage 2 was trained, the annotated views are segmented (3D-OVS mIoU
and accuracy, overlays and per-class relevancy maps). ``<out>/results.{md,csv,json}`` hold one row per run; for a
sweep, ``<out>/miou_by_scene.*`` has one row per configuration and one column per scene plus their mean. Jobs that
differ only in their stage-2 seed (``model.seed``) are one configuration: ``<out>/seeds.*`` gives each
configuration and scene the mean, min, max and standard deviation over its seeds, and ``miou_by_scene`` the mean.
Several sweeps below one folder make one table (``experiments/benchmark_stage2.sh``). ``<out>/per_query.*`` is
the second table, the LangSplat per-query protocol: each class prompt queried alone, its mask the normalised
relevancy above one threshold, and the IoU of each phrase's mask (:func:`laser.evaluation.metrics.per_query_metrics`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import laser  # noqa: F401  (makes torchvision importable on CPU torch before anything imports it)
import hydra
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from laser.errors import CheckpointError, LaserError
from laser.evaluation.tables import pivot, seed_summary, write_tables
from laser.training.loop import cost_columns
from laser.training.loggers import Logger
from laser.training.run import Run, resolve_device
from laser.training.trained import load_trained


def find_runs(folder: Path) -> list[Path]:
    """The run folders at or below ``folder``: those with a saved config and a checkpoint folder."""
    if not folder.is_dir():
        raise CheckpointError(folder, "run folder not found")
    runs = sorted({p.parent.parent for p in folder.glob("**/.hydra/config.yaml")
                   if (p.parent.parent / "checkpoints").is_dir()})
    if not runs:
        raise CheckpointError(folder, "no trained run here (expected .hydra/config.yaml and checkpoints/)")
    return runs


def run_labels(runs: list[Path], root: Path) -> dict[Path, str]:
    """Each run's name in the tables: for a sweep, the overrides that differ between its jobs ("+" dropped)."""
    overrides = {}
    for run in runs:
        path = run / ".hydra" / "overrides.yaml"
        overrides[run] = [o.lstrip("+") for o in OmegaConf.load(path)] if run != root and path.is_file() else []
    shared = set.intersection(*(set(o) for o in overrides.values())) if len(runs) > 1 else set()
    return {run: ",".join(o for o in overrides[run] if o not in shared) or run.name for run in runs}


def evaluate_run(folder: Path, out: Path, device) -> dict:
    """Rebuild a run's stages from its saved config and checkpoints and evaluate each one that was trained; the
    training cost recorded in each checkpoint joins the row."""
    trained = load_trained(folder, device)
    stage1 = trained.reconstruction
    row = {"scene": trained.cfg.scene.name, "step": trained.steps[stage1.name],
           **stage1.evaluate(out / stage1.name), **cost_columns("stage1", trained.costs[stage1.name])}
    stage2 = trained.segmentation
    if stage2 is not None:
        row.update({"method": stage2.name, **stage2.evaluate(out / stage2.name),
                    **cost_columns("stage2", trained.costs[stage2.name])})
    return row


def per_query_row(metrics_file: Path) -> dict | None:
    """The per-query protocol's figures a stage-2 evaluation wrote (None before they were recorded)."""
    if not metrics_file.is_file():
        return None
    saved = json.loads(metrics_file.read_text()).get("per_query")
    if saved is None:
        return None
    return {"threshold": saved["threshold"], "miou": saved["miou"],
            **{f"iou {phrase}": iou for phrase, iou in saved["per_phrase_iou"].items()}}


def recorded_run(folder: Path) -> dict:
    """The row of a run from the metrics its stages recorded at the end of training (no rendering)."""
    cfg = OmegaConf.load(folder / ".hydra" / "config.yaml")
    run = Run(dir=folder, device=torch.device("cpu"), logger=Logger())
    row = {"scene": cfg.scene.name}
    method = get_class(cfg.model._target_).name
    for stage in (get_class(cfg.reconstruction._target_).name, method):
        path = run.test_outputs(stage) / "metrics.json"
        if path.is_file():
            if stage == method:
                row["method"] = method
            row.update(json.loads(path.read_text())["metrics"])
    if len(row) == 1:
        raise CheckpointError(folder, "no recorded metrics (reconstruction/test/metrics.json); evaluate with "
                                      "render=true")
    return row


def configuration(label: str) -> str:
    """A sweep job's overrides without its scene and stage-2 seed: the row of the configuration x scene table."""
    return ",".join(o for o in label.split(",") if not o.startswith(("scene=", "model.seed="))) or "default"


def evaluate_all(cfg: DictConfig) -> None:
    """Evaluate (or tabulate) every run at or below ``cfg.run`` and write the tables."""
    root, out = Path(cfg.run), Path(cfg.out)
    device = resolve_device(cfg.device)
    rows, per_query = [], []
    for run, label in run_labels(find_runs(root), root).items():
        folder = out / label.replace("/", "_")
        row = evaluate_run(run, folder, device) if cfg.render else recorded_run(run)
        rows.append({"run": label, **row})
        if "method" in row:
            # Where this evaluation wrote the stage's metrics, or where training recorded them (render=false).
            query = per_query_row((folder / row["method"] if cfg.render else run / row["method"] / "test")
                                  / "metrics.json")
            if query is not None:
                per_query.append({"run": label, "scene": row["scene"], "method": row["method"], **query})
    print(write_tables(rows, out), end="")
    if per_query:
        print(write_tables(per_query, out, name="per_query"), end="")
    segmented = [{**r, "configuration": configuration(r["run"])} for r in rows if r.get("miou") is not None]
    if len(segmented) > 1:
        seeds = seed_summary(segmented, ("configuration", "scene"), "miou")
        if any(r["n_seeds"] > 1 for r in seeds):
            print(write_tables(seeds, out, name="seeds", with_mean=False), end="")
        table = pivot(seeds, "configuration", "scene", "miou")
        print(write_tables(table, out, name="miou_by_scene", with_mean=False), end="")


@hydra.main(version_base=None, config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        evaluate_all(cfg)
    except LaserError as err:          # a message that says what to do needs no traceback
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
