"""Behaviour preserved across the composition redesign: short stage-2 runs of each method give, to float rounding,
the losses at every step and the final metrics that the code before it gave (``fixtures/stage2_regression.json``,
recorded on the commit it names by ``fixtures/record_stage2_regression.py``). Defaults changed since then are held at
the recorded values: Laser's crops draw their views with replacement, and the oracle is the ``label_blur`` model."""

import json
from pathlib import Path

import pytest

from laser.training.build import build_reconstruction, build_segmentation, prepare_segmentation
from laser.training.loop import fit, read_figures
from laser.training.run import setup_run
from test_laser_stage import config

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "stage2_regression.json").read_text())
LASER = ["model.schedule.n_iters=6", "model.supervision.patch_size=32", "model.supervision.patch_num=2",
         "model.rendering.n_samples=16", "model.schedule.joint_start_iter=2", "model.cross_start_iter=3"]
OVS3D = ["model=ovs3d", "model.supervision.use_dino=false", "model.schedule.n_iters=5",
         "model.supervision.batch_size=64", "model.rendering.n_samples=16", "model.schedule.joint_start_iter=3",
         "model.supervision.patch_size=32", "model.supervision.patch_num=2"]
LERF = ["model=lerf", "teacher_source=clip", "clip=tiny", "teacher.num_layers=2", "teacher.scale_min=0.75",
        "teacher.scale_max=1.0", "model.schedule.n_iters=4", "model.supervision.batch_size=64",
        "model.rendering.n_samples=16", "model.language_field.n_levels=4", "model.language_field.features_per_level=2",
        "model.language_field.log2_hashmap_size=10", "model.query_scales=2", "model.language_field.hidden_dim=32",
        "model.language_field.n_hidden=2", "model.language_field.dino_hidden_dim=16",
        "model.supervision.dino_image_size=32", "model.min_views=2"]
AS_RECORDED = ["teacher.noise_model=label_blur"]                      # defaults changed since the recording
LASER_RECORDED = [*LASER, *AS_RECORDED, "model.supervision.view_order=replacement"]
CASES = {  # the fixture's cases in today's overrides
    "laser": LASER_RECORDED,
    "laser_code_exact": [*LASER_RECORDED, "model.losses.relevancy.mode=code_exact"],
    "laser_plain": [*LASER_RECORDED, "+ablation=plain"],
    "laser_bound_branch": [*LASER_RECORDED, "model.adapter.bound_branch=true"],
    "ovs3d": [*OVS3D, *AS_RECORDED],
    "lerf": LERF,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_stage2_runs_reproduce_the_recorded_figures(tiny_scene, tmp_path, case):
    recorded = FIXTURE["cases"][case]
    cfg = config(tiny_scene, *CASES[case], stage2=False)
    run = setup_run(cfg, tmp_path / "run")
    reconstruction, identity = build_reconstruction(cfg, run.device)
    prepared = prepare_segmentation(cfg, reconstruction.scene)
    stage1 = fit(reconstruction, run, cfg, identity, "stage1")
    assert stage1["test_psnr"] == pytest.approx(recorded["stage1_psnr"], rel=1e-6)
    stage, _ = build_segmentation(cfg, prepared, reconstruction.field, run.device)
    assert stage.n_iters == len(recorded["steps"])
    for step, expected in enumerate(recorded["steps"]):
        logged = read_figures(stage.train_step(step))
        assert logged.keys() == expected.keys(), step
        for key, value in expected.items():
            # Float rounding differs between CPUs (stage 1 itself moved by 6e-7 dB on another machine of this
            # project), and stage 2 carries it: the worst deviation seen there was 1.8e-5 relative.
            assert logged[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (step, key)
    metrics = stage.evaluate(tmp_path / "eval")
    assert metrics["miou"] == pytest.approx(recorded["miou"], abs=1e-6)
    assert metrics["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-6)
