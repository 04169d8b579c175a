"""The training loop: one stage from its last checkpoint to ``stage.n_iters``, then its test evaluation; and the
whole run, stage 1 then stage 2, as ``train.py`` runs it.

A stage is anything with ``name``, ``n_iters``, ``train_step(step) -> {name: 0-dim tensor or float}``,
``check_finite()``, ``evaluate(out_dir, extra)`` and ``state_dict`` / ``load_state_dict``
(:class:`~laser.methods.reconstruction.Reconstruction`, :class:`~laser.methods.segmentation.SegmentationStage`).

The loop reads a step's figures only where it uses them (every ``log_every`` steps, before each checkpoint and at
the end), so that on a GPU the steps in between queue without waiting for the device.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import imageio.v3 as iio
import torch
from omegaconf import DictConfig
from torch import Tensor
from tqdm import tqdm

from laser.allocator import release_freed_memory
from laser.errors import CheckpointError, NonFiniteError
from laser.training import checkpoint
from laser.training.build import build_reconstruction, build_segmentation, prepare_segmentation
from laser.training.resources import PeakMemory
from laser.training.run import Run, setup_run
from laser.training.store import StageStore


def restore(stage, run: Run, identity: dict, resume: bool) -> tuple[int, dict]:
    """Step to start from and the cost so far: (0, zero cost) for a fresh run, or those of a compatible checkpoint
    in the run folder."""
    path = run.checkpoint_path(stage.name)
    if not path.exists():
        return 0, {"train_s": 0.0, "peak_mb": 0.0}
    if not resume:
        raise CheckpointError(path, "already exists and resume=false; pass resume=true to continue it, or "
                                    "choose another run folder (hydra.run.dir=...)")
    saved = checkpoint.restore_stage(stage, path, identity)
    checkpoint.set_rng_state(saved["rng"])
    return saved["step"], saved["cost"]


def save(stage, run: Run, identity: dict, step: int, cost: dict) -> None:
    checkpoint.atomic_save({"identity": identity, "step": step, "stage": stage.state_dict(), "cost": cost,
                            "rng": checkpoint.rng_state()}, run.checkpoint_path(stage.name))


def cost_columns(label: str, cost: dict) -> dict[str, float]:
    return {f"{label}_train_s": round(cost["train_s"], 2), f"{label}_peak_mb": round(cost["peak_mb"], 1)}


def read_figures(metrics: dict[str, Tensor | float]) -> dict[str, float]:
    """A step's figures as floats, with one wait for the device for all of its tensors."""
    tensors = [k for k, v in metrics.items() if isinstance(v, Tensor)]
    values = torch.stack([metrics[k].float() for k in tensors]).tolist() if tensors else []
    return {**metrics, **dict(zip(tensors, values))}


def guarded_step(stage, step: int, last_saved: int, path: Path, read: bool) -> dict[str, float] | None:
    """``stage.train_step(step)``; where ``read``, its figures as floats, stopped at a non-finite one with the step,
    the term and the checkpoint kept. Stage 2 skips a non-finite step on the device and reports the first one
    (``check_finite``); for stage 1 the figures read are checked."""
    try:
        metrics = stage.train_step(step)
        if not read:
            return None
        stage.check_finite()
        figures = read_figures(metrics)
        bad = next((k for k, v in figures.items() if not math.isfinite(v)), None)
        if bad is not None:
            raise NonFiniteError(step, f"'{bad}' is {figures[bad]}")
    except NonFiniteError as err:
        kept = (f"the last good checkpoint, {path} (step {last_saved}), is kept" if last_saved
                else "no checkpoint had been written yet")
        raise NonFiniteError(err.step, f"{stage.name} stopped: {err.problem}; {kept}") from None
    return figures


def fit(stage, run: Run, cfg: DictConfig, identity: dict, label: str) -> dict[str, float]:
    """One stage from its last checkpoint to ``stage.n_iters``, then a test evaluation.

    Returns the evaluation's metrics plus ``<label>_train_s`` (seconds in training steps, summed over resumptions;
    evaluations excluded) and ``<label>_peak_mb`` (peak memory while training, :class:`PeakMemory`)."""
    start, cost = restore(stage, run, identity, cfg.resume)
    results = run.test_outputs(stage.name) / "metrics.json"
    if start == stage.n_iters and results.exists():
        return json.loads(results.read_text())["metrics"]

    memory = PeakMemory(run.device)
    release_freed_memory()          # what earlier stages freed is kept for reuse (laser.allocator): not this one's
    memory.reset()
    bar = tqdm(range(start, stage.n_iters), initial=start, total=stage.n_iters, desc=stage.name,
               mininterval=1.0, dynamic_ncols=True)
    saved = start
    for step in bar:
        tic = time.perf_counter()
        done = step + 1
        checkpointing = done % cfg.checkpoint_every == 0 or done == stage.n_iters
        metrics = guarded_step(stage, step, saved, run.checkpoint_path(stage.name),
                               read=step % cfg.log_every == 0 or checkpointing)
        cost["train_s"] += time.perf_counter() - tic
        if step % cfg.log_every == 0:
            run.logger.log({f"{stage.name}/{k}": v for k, v in metrics.items()}, step)
            bar.set_postfix({k: f"{metrics[k]:.4f}" for k in ("loss", "psnr") if k in metrics})
        if checkpointing:
            cost["peak_mb"] = max(cost["peak_mb"], memory.peak_mb())
            save(stage, run, identity, done, cost)
            saved = done
        if cfg.eval_every and done % cfg.eval_every == 0 and done < stage.n_iters:
            scores = stage.evaluate(run.dir / stage.name / f"step_{done}")
            run.logger.log({f"{stage.name}/{k}": v for k, v in scores.items()}, step)

    metrics = stage.evaluate(results.parent, extra=cost_columns(label, cost))
    run.logger.log({f"{stage.name}/{k}": v for k, v in metrics.items()}, stage.n_iters)
    run.logger.log_images({f"{stage.name}/{p.stem}": iio.imread(p) for p in sorted(results.parent.glob("*.png"))},
                          stage.n_iters)
    return metrics


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Stage 1, then stage 2 when the scene has classes and ``cfg.segmentation``; returns the run folder and both
    stages' metrics. Stage 2 is prepared (and refused if it cannot work) before stage 1 trains."""
    run = setup_run(cfg, run_dir)
    try:
        reconstruction, identity = build_reconstruction(cfg, run.device)
        segment = cfg.segmentation and bool(reconstruction.scene.classes)
        prepared = prepare_segmentation(cfg, reconstruction.scene) if segment else None
        store, stage = StageStore(cfg.stage_store), reconstruction.name
        shared = (run.checkpoint_path(stage), run.test_outputs(stage), stage, identity,
                  Path(cfg.scene.root).resolve())
        if store.fetch(*shared):
            print(f"stage 1: reusing {store.folder(*shared[2:])}")
        metrics = fit(reconstruction, run, cfg, identity, "stage1")
        store.publish(*shared)
        if prepared is not None:
            segmentation, identity = build_segmentation(cfg, prepared, reconstruction.field, run.device)
            metrics |= fit(segmentation, run, cfg, identity, "stage2")
        elif cfg.segmentation:
            print(f"{cfg.scene.name} has no segmentations/classes.txt: stage 2 (segmentation) skipped")
    finally:
        run.logger.finish()
    return {"run_dir": str(run.dir), **metrics}
