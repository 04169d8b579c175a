"""Laser's stage 2 through train.py's loop on the tiny synthetic scene: oracle teacher, tiny random CLIP."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import train
from laser.data.scenes import load_scene
from laser.errors import DataError
from laser.training.run import setup_run

REPO = Path(__file__).resolve().parents[1]
STAGE1 = ["logger=none", "reconstruction.n_iters=4", "reconstruction.batch_size=64",
          "reconstruction.n_voxels_init=4096", "reconstruction.upsample_steps=[]", "reconstruction.alpha_mask_steps=[2]",
          "reconstruction.max_samples=16", "scene.generate=null", "checkpoint_every=3"]
STAGE2 = ["scene.laser.n_iters=6", "scene.laser.patch_size=32", "scene.laser.patch_num=2", "scene.laser.n_samples=16",
          "scene.laser.joint_start_iter=2", "scene.laser.cross_start_iter=3"]


def config(root, *extra):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("train", overrides=[f"scene.root={root}", *STAGE1, *STAGE2, *extra])


def run_both(cfg, run_dir):
    run = setup_run(cfg, run_dir)
    reconstruction, identity = train.build_reconstruction(cfg, run.device)
    prepared = train.prepare_segmentation(cfg, reconstruction.scene)
    train.fit(reconstruction, run, cfg, identity, "stage1")
    stage, identity = train.build_segmentation(cfg, prepared, reconstruction.field, run.device)
    return stage, train.fit(stage, run, cfg, identity, "stage2")


def test_laser_stage_trains_evaluates_and_is_reused(tiny_scene, tmp_path):
    cfg = config(tiny_scene)
    stage, metrics = run_both(cfg, tmp_path / "run")
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["accuracy"] <= 1.0
    out = tmp_path / "run/laser/test"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["views"] == sorted(stage.eval_scene.annotations)
    assert len(saved["per_view_iou"]) == len(saved["views"])
    assert all((out / f"segmentation_{v:03d}.png").is_file() for v in saved["views"])
    assert stage.joint                                          # appearance was fine-tuned from joint_start_iter
    assert torch.load(tmp_path / "run/checkpoints/laser.pt", weights_only=False)["step"] == 6
    _, again = run_both(cfg, tmp_path / "run")                 # finished: reused, not retrained
    assert again == metrics


@pytest.mark.parametrize("switch", ["use_adapter", "use_ltqa", "use_label_volume", "use_text_augmentation",
                                    "use_self_cross"])
def test_every_ablation_switch_trains(tiny_scene, tmp_path, switch):
    stage, metrics = run_both(config(tiny_scene, f"model.{switch}=false", "model.n_iters=3"), tmp_path / "run")
    assert 0.0 <= metrics["miou"] <= 1.0


def test_code_exact_ce_trains(tiny_scene, tmp_path):
    _, metrics = run_both(config(tiny_scene, "model.ce_mode=code_exact", "model.n_iters=3"), tmp_path / "run")
    assert 0.0 <= metrics["miou"] <= 1.0


def test_adapter_at_inference_and_bounded_branch(tiny_scene, tmp_path):
    # The two non-default adapter flags through the config: scores go through the (bounded) adapter, without autograd.
    cfg = config(tiny_scene, "model.adapter_at_inference=true", "model.adapter_bound_branch=true", "model.n_iters=3")
    stage, metrics = run_both(cfg, tmp_path / "run")
    assert stage.adapter.bound_branch and 0.0 <= metrics["miou"] <= 1.0
    view = stage.eval_scene.annotated_views[0]
    adapted, _ = stage.class_scores(view)
    assert not adapted.requires_grad
    # Scoring through the adapter leaves its centring statistics and every module's training mode as they were,
    # also when the scoring fails.
    statistics = stage.adapter.mu_in.clone(), stage.adapter.mu_out.clone()
    stage.evaluate(tmp_path / "again")
    assert torch.equal(stage.adapter.mu_in, statistics[0]) and torch.equal(stage.adapter.mu_out, statistics[1])
    with pytest.raises(RuntimeError, match="mid-evaluation"), stage.evaluating():
        assert not any(module.training for module in stage.modules().values())
        raise RuntimeError("mid-evaluation")
    assert all(module.training for module in stage.modules().values())
    stage.adapter_at_inference = False
    assert not torch.allclose(adapted, stage.class_scores(view)[0])


def test_impossible_stage_2_settings_are_refused_before_stage_1(tiny_scene, tmp_path):
    import shutil
    root = tmp_path / "nolabels"
    shutil.copytree(tiny_scene, root)
    shutil.rmtree(root / "labels")
    cfg = config(root)
    with pytest.raises(DataError, match="needs per-pixel labels"):
        train.prepare_segmentation(cfg, load_scene(cfg.scene, cfg.scene.downsample.reconstruction))
    cfg = config(tiny_scene, "scene.laser.patch_size=64")
    with pytest.raises(ValueError, match="do not fit the 64x48 images"):
        train.prepare_segmentation(cfg, load_scene(cfg.scene, cfg.scene.downsample.reconstruction))
