"""Train one scene: stage 1 fits a radiance field to the photos; stage 2 distils language features into it.

    python train.py scene=bed                    # a 3D-OVS scene (data/bed)
    python train.py                              # the synthetic benchmark, generated on first use
    python train.py -m field=tensorf,hashgrid    # a Hydra sweep, one run folder per job

Runs resume from their last checkpoint in the run folder (``runs/<scene>`` by default).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import laser  # noqa: F401  (makes torchvision importable on CPU torch before anything imports it)
import hydra
import imageio.v3 as iio
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from laser.data.patches import PatchSampler
from laser.data.scene import Scene
from laser.data.scenes import load_scene
from laser.errors import CheckpointError
from laser.language.text import TextEncoder, encode_scene_text
from laser.training import checkpoint
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


def fit(stage, run: Run, cfg: DictConfig, identity: dict, label: str) -> dict[str, float]:
    """The training loop: one stage from its last checkpoint to ``stage.n_iters``, then a test evaluation.

    Returns the evaluation's metrics plus ``<label>_train_s`` (seconds in training steps, summed over resumptions;
    evaluations excluded) and ``<label>_peak_mb`` (peak memory while training, :class:`PeakMemory`)."""
    start, cost = restore(stage, run, identity, cfg.resume)
    results = run.test_outputs(stage.name) / "metrics.json"
    if start == stage.n_iters and results.exists():
        return json.loads(results.read_text())["metrics"]

    memory = PeakMemory(run.device)
    memory.reset()
    bar = tqdm(range(start, stage.n_iters), initial=start, total=stage.n_iters, desc=stage.name,
               mininterval=1.0, dynamic_ncols=True)
    for step in bar:
        tic = time.perf_counter()
        metrics = stage.train_step(step)
        cost["train_s"] += time.perf_counter() - tic
        done = step + 1
        if step % cfg.log_every == 0:
            run.logger.log({f"{stage.name}/{k}": v for k, v in metrics.items()}, step)
            bar.set_postfix({k: f"{metrics[k]:.4f}" for k in ("loss", "psnr") if k in metrics})
        if done % cfg.checkpoint_every == 0 or done == stage.n_iters:
            cost["peak_mb"] = max(cost["peak_mb"], memory.peak_mb())
            save(stage, run, identity, done, cost)
        if cfg.eval_every and done % cfg.eval_every == 0 and done < stage.n_iters:
            scores = stage.evaluate(run.dir / stage.name / f"step_{done}")
            run.logger.log({f"{stage.name}/{k}": v for k, v in scores.items()}, step)

    metrics = stage.evaluate(results.parent, extra=cost_columns(label, cost))
    run.logger.log({f"{stage.name}/{k}": v for k, v in metrics.items()}, stage.n_iters)
    run.logger.log_images({f"{stage.name}/{p.stem}": iio.imread(p) for p in sorted(results.parent.glob("*.png"))},
                          stage.n_iters)
    return metrics


def cost_columns(label: str, cost: dict) -> dict[str, float]:
    return {f"{label}_train_s": round(cost["train_s"], 2), f"{label}_peak_mb": round(cost["peak_mb"], 1)}


def prepare_segmentation(cfg: DictConfig, loaded: Scene) -> dict:
    """What stage 2 needs besides the trained field: the scene at the patch and evaluation resolutions, the text
    embeddings and the prepared teacher. Built before stage 1, so that missing CLIP weights, a teacher that needs
    labels/ or crops larger than the images fail at once instead of after the reconstruction.

    ``loaded`` is the scene stage 1 uses; it is reused wherever a resolution matches instead of read again."""
    ds = cfg.scene.downsample
    scenes = {ds.reconstruction: loaded}

    def at(downsample: float) -> Scene:
        if downsample not in scenes:
            scenes[downsample] = load_scene(cfg.scene, downsample)
        return scenes[downsample]

    scene = at(ds.patch)
    if "patch_size" in cfg.model:                                          # methods that train on crops
        PatchSampler.check(scene, cfg.model.patch_size, cfg.model.patch_num)
    text = encode_scene_text(TextEncoder(instantiate(cfg.clip)), scene.classes)
    teacher = instantiate(cfg.teacher)
    teacher.prepare(scene, text.embeddings)
    return {"scene": scene, "eval_scene": at(ds.eval), "text": text, "teacher": teacher}


def build_segmentation(cfg: DictConfig, prepared: dict, field, device):
    """Stage 2 on the stage-1 field."""
    # teacher_form is read by the teacher configs (the form of teacher this method learns from), not by the method.
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("teacher_form", None)
    stage = instantiate(model, _partial_=True)(**prepared, field=field, device=device)
    identity = {**stage.identity(), "model_config": OmegaConf.to_container(cfg.model, resolve=True),
                "teacher_config": OmegaConf.to_container(cfg.teacher, resolve=True)}
    return stage, identity


def build_reconstruction(cfg: DictConfig, device):
    scene = load_scene(cfg.scene, cfg.scene.downsample.reconstruction)
    field = instantiate(cfg.field, aabb=scene.aabb.tolist())
    # Objects are passed to a partial: instantiate would try to turn them into configs.
    stage = instantiate(cfg.reconstruction, _partial_=True)(scene=scene, field=field, device=device)
    identity = {**stage.identity(), "field_config": OmegaConf.to_container(cfg.field, resolve=True),
                "schedule": OmegaConf.to_container(cfg.reconstruction, resolve=True), "seed": cfg.seed}
    return stage, identity


@hydra.main(version_base=None, config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run = setup_run(cfg)
    reconstruction, identity = build_reconstruction(cfg, run.device)
    segment = cfg.segmentation and bool(reconstruction.scene.classes)
    prepared = prepare_segmentation(cfg, reconstruction.scene) if segment else None
    store, stage = StageStore(cfg.stage_store), reconstruction.name
    shared = (run.checkpoint_path(stage), run.test_outputs(stage), stage, identity, Path(cfg.scene.root).resolve())
    if store.fetch(*shared):
        print(f"stage 1: reusing {store.folder(*shared[2:])}")
    metrics = fit(reconstruction, run, cfg, identity, "stage1")
    store.publish(*shared)
    if prepared is not None:
        segmentation, identity = build_segmentation(cfg, prepared, reconstruction.field, run.device)
        metrics |= fit(segmentation, run, cfg, identity, "stage2")
    elif cfg.segmentation:
        print(f"{cfg.scene.name} has no segmentations/classes.txt: stage 2 (segmentation) skipped")
    print(json.dumps({"run_dir": str(run.dir), **metrics}))
    run.logger.finish()


if __name__ == "__main__":
    main()
