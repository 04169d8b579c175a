"""Laser's stage 2 through the training loop on the tiny synthetic scene: oracle teacher, tiny random CLIP."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from laser.data.scenes import load_scene
from laser.errors import ConfigError, DataError
from laser.training.build import build_reconstruction, build_segmentation, prepare_segmentation
from laser.training.loop import fit
from laser.training.run import setup_run

REPO = Path(__file__).resolve().parents[1]
STAGE1 = ["logger=none", "reconstruction.n_iters=4", "reconstruction.batch_size=64",
          "reconstruction.n_voxels_init=4096", "reconstruction.upsample_steps=[]",
          "reconstruction.alpha_mask_steps=[2]",
          "reconstruction.max_samples=16", "scene.generate=null", "checkpoint_every=3"]
STAGE2 = ["model.schedule.n_iters=6", "model.supervision.patch_size=32", "model.supervision.patch_num=2",
          "model.rendering.n_samples=16", "model.schedule.joint_start_iter=2", "model.cross_start_iter=3"]


def config(root, *extra, stage2=True):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("train", overrides=[f"scene.root={root}", *STAGE1, *(STAGE2 if stage2 else []), *extra])


def run_both(cfg, run_dir):
    run = setup_run(cfg, run_dir)
    reconstruction, identity = build_reconstruction(cfg, run.device)
    prepared = prepare_segmentation(cfg, reconstruction.scene)
    fit(reconstruction, run, cfg, identity, "stage1")
    stage, identity = build_segmentation(cfg, prepared, reconstruction.field, run.device)
    return stage, fit(stage, run, cfg, identity, "stage2")


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


@pytest.mark.parametrize("ablation", ["no_adapter", "no_ltqa", "no_label_volume", "no_text_augmentation",
                                      "no_self_cross", "plain"])
def test_every_ablation_trains_without_its_parts(tiny_scene, tmp_path, ablation):
    # The ablation file must decide the cross start: the command line would win over it.
    stage2 = [o for o in STAGE2 if ablation != "no_self_cross" or not o.startswith("model.cross_start_iter")]
    cfg = config(tiny_scene, *stage2, f"+ablation={ablation}", "model.schedule.n_iters=4", stage2=False)
    stage, metrics = run_both(cfg, tmp_path / "run")
    assert 0.0 <= metrics["miou"] <= 1.0
    parts = {"no_adapter": "adapter", "no_ltqa": "ltqa", "no_label_volume": "labels"}
    if ablation in parts:
        assert parts[ablation] not in stage.modules()
    logged = stage.train_step(4)                                # past cross_start_iter = 3
    off = {"no_adapter": {"self_feature", "aug"}, "no_label_volume": {"relevancy"}, "no_text_augmentation": {"aug"},
           "plain": {"self_feature", "aug", "relevancy"}}.get(ablation, set())
    assert off.isdisjoint(logged) and {"rgb_mse", "feature"} <= set(logged)
    if ablation == "no_self_cross":
        assert not stage.cross(4) and "f1" not in stage.outputs(stage.supervision.sample(stage.teacher), 4)


def test_a_loss_whose_part_is_off_or_an_unknown_loss_is_refused(tiny_scene, tmp_path):
    with pytest.raises(ConfigError, match="model.losses.relevancy: .*needs a part that is switched off"):
        run_both(config(tiny_scene, "model.label_volume=null"), tmp_path / "a")
    with pytest.raises(ConfigError, match="model.losses.colour: no such loss term"):
        run_both(config(tiny_scene, "+model.losses.colour={weight:1.0}"), tmp_path / "b")
    with pytest.raises(ConfigError, match="model.losses.aug: has no weight"):
        run_both(config(tiny_scene, "~model.losses.aug.weight"), tmp_path / "c")


def test_a_zero_weight_switches_a_term_off(tiny_scene, tmp_path):
    stage, _ = run_both(config(tiny_scene, "model.losses.aug.weight=0", "model.schedule.n_iters=2"), tmp_path / "run")
    assert "aug" not in stage.train_step(2)


def test_adapter_at_inference_and_bounded_branch(tiny_scene, tmp_path):
    # The two non-default adapter values through the config: scores go through the (bounded) adapter, without autograd.
    cfg = config(tiny_scene, "model.adapter_at_inference=true", "model.adapter.bound_branch=true",
                 "model.schedule.n_iters=3")
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


def test_the_papers_constants_reach_the_parts(tiny_scene, tmp_path):
    cfg = config(tiny_scene, "model.adapter.ratio=0.3", "model.adapter.momentum=0.5", "model.ltqa.num_queries=7",
                 "model.losses.self_feature.self_weight=0.5", "model.losses.self_feature.cross_weight=0.5",
                 "model.prompt_repeats=3", "model.schedule.n_iters=1")
    stage, _ = run_both(cfg, tmp_path / "run")
    assert stage.adapter.ratio == 0.3 and stage.adapter.momentum == 0.5 and stage.ltqa.queries.shape[0] == 7
    assert stage.loss_options["self_feature"] == {"self_weight": 0.5, "cross_weight": 0.5}
    assert not torch.allclose(stage.text_repeated, config_text(tiny_scene, tmp_path))


def config_text(root, tmp_path):
    """T̃ of the default configuration (2 repeats)."""
    cfg = config(root)
    return prepare_segmentation(cfg, load_scene(cfg.scene, cfg.scene.downsample.reconstruction)).text.repeated


def test_impossible_stage_2_settings_are_refused_before_stage_1(tiny_scene, tmp_path):
    root = tmp_path / "nolabels"
    shutil.copytree(tiny_scene, root)
    shutil.rmtree(root / "labels")
    cfg = config(root)
    with pytest.raises(DataError, match="needs per-pixel labels"):
        prepare_segmentation(cfg, load_scene(cfg.scene, cfg.scene.downsample.reconstruction))
    cfg = config(tiny_scene, "model.supervision.patch_size=64")
    with pytest.raises(ConfigError, match="do not fit the 64x48 images"):
        prepare_segmentation(cfg, load_scene(cfg.scene, cfg.scene.downsample.reconstruction))
    for setting, message in [("model.schedule.n_iters=0", "model.schedule.n_iters: stage 2 needs at least one step"),
                             ("model.rendering.chunk=0", "model.rendering.chunk: a render call needs at least one"),
                             ("model.rendering.n_samples=0", "model.rendering.n_samples: must be at least 1")]:
        cfg = config(tiny_scene, setting)
        with pytest.raises(ConfigError, match=message):
            prepare_segmentation(cfg, load_scene(cfg.scene, cfg.scene.downsample.reconstruction))
