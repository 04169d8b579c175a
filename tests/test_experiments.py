"""Hydra sweeps: the ablation experiment shares one stage 1 and eval.py turns the sweep into the ablation table."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from test_train import TINY

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ["full", "no_adapter", "no_self_cross", "no_ltqa", "no_label_volume", "no_text_augmentation", "plain"]
OFF = {"full": ({}, set()), "no_adapter": ({"adapter"}, {"self_feature", "aug"}), "no_self_cross": (set(), set()),
       "no_ltqa": ({"ltqa"}, set()), "no_label_volume": ({"label_volume"}, {"relevancy"}),
       "no_text_augmentation": (set(), {"aug"}),
       "plain": ({"adapter", "ltqa", "label_volume"}, {"self_feature", "aug", "relevancy"})}   # (parts, losses) off


def test_ablation_experiment_sweeps_every_variant():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=["experiment=ablation"], return_hydra_config=True)
        assert cfg.hydra.sweeper.params["+ablation"].split(",") == VARIANTS
        for variant in VARIANTS:
            model = compose("train", overrides=[f"+ablation={variant}"]).model
            parts, losses = OFF[variant]
            assert {k for k in ("adapter", "ltqa", "label_volume") if model[k] is None} == set(parts)
            assert {k for k, v in model.losses.items() if v is None} == losses
            assert (model.cross_start_iter is None) == (variant == "no_self_cross")


def test_ablation_sweep_trains_stage_one_once_and_tabulates(tiny_scene, tmp_path):
    scene = tmp_path / "scene"
    shutil.copytree(tiny_scene, scene)
    sweep = tmp_path / "sweep"
    out = subprocess.run([sys.executable, "train.py", "-m", "experiment=ablation", f"scene.root={scene}", *TINY,
                          f"stage_store={tmp_path / 'stages'}", f"hydra.sweep.dir={sweep}", "+ablation=full,no_ltqa"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("stage 1: reusing") == 1                 # the second job took the first one's stage 1
    jobs = sorted(sweep.glob("*/.hydra/config.yaml"))
    assert len(jobs) == 2

    out = subprocess.run([sys.executable, "eval.py", f"run={sweep}", f"out={tmp_path / 'eval'}"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [r for r in json.loads((tmp_path / "eval/results.json").read_text()) if r["run"] != "mean"]
    assert {r["method"] for r in rows} == {"laser"}
    assert all(0 <= r["miou"] <= 1 and r["stage2_train_s"] > 0 for r in rows)
    table = json.loads((tmp_path / "eval/miou_by_scene.json").read_text())
    assert sorted(r["configuration"] for r in table) == ["ablation=full", "ablation=no_ltqa"]


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("train", overrides=list(overrides))


def test_laser_stable_is_laser_with_the_bounded_branch_on_every_tuned_scene():
    tuned = sorted(p.stem for p in (REPO / "conf/tuning/laser").glob("*.yaml"))
    assert sorted(p.stem for p in (REPO / "conf/tuning/laser_stable").glob("*.yaml")) == tuned
    for scene in tuned:
        stable, paper = compose_train(f"scene={scene}", "model=laser_stable"), compose_train(f"scene={scene}")
        assert stable.model.adapter.bound_branch and not paper.model.adapter.bound_branch
        stable.model.adapter.bound_branch = False
        assert stable == paper, scene


def test_the_desk_layout_takes_the_synthetic_scenes_sizing():
    for model in ("laser", "laser_stable", "ovs3d", "lerf"):
        desk, table = compose_train("scene=synthetic_desk", f"model={model}"), compose_train(f"model={model}")
        assert desk.model == table.model and desk.teacher == table.teacher, model
    assert desk.scene.generate.layout == "desk" and desk.scene.root == "data/synthetic_desk"


@pytest.mark.parametrize("script", ["benchmark_stage2.sh", "robustness_stage2.sh"])
def test_the_stage_2_benchmark_scripts_run_sweeps_that_compose(tmp_path, script):
    # A stand-in interpreter records each command instead of training.
    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    out = subprocess.run(["bash", str(REPO / "experiments" / script), str(tmp_path / "out")], cwd=REPO,
                         env={**os.environ, "PYTHON": str(fake)}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    calls = [line.split() for line in log.read_text().splitlines()]
    assert calls[-1] == ["eval.py", f"run={tmp_path / 'out'}", "render=false"]
    sweeps = [c for c in calls[:-1] if c[:2] == ["train.py", "-m"]]
    assert len(sweeps) == len(calls) - 1 >= 4
    for sweep in sweeps:                     # every job of every sweep composes: its first and last choices
        for pick in (0, -1):
            overrides = [o.split("=", 1)[0] + "=" + o.split("=", 1)[1].split(",")[pick] for o in sweep[2:]
                         if not o.startswith("hydra.")]
            compose_train(*overrides)
    swept = " ".join(" ".join(s) for s in sweeps)
    if script == "benchmark_stage2.sh":
        assert "scene=synthetic,synthetic_desk" in swept and "model=laser,laser_stable" in swept
        assert swept.count("model.seed=20230417,20230418,20230419") == 2       # the full Laser's and plain's


def test_the_360_benchmark_runs_jobs_that_compose(tmp_path):
    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    out = subprocess.run(["bash", str(REPO / "experiments" / "benchmark_360.sh"), str(tmp_path / "out")], cwd=REPO,
                         env={**os.environ, "PYTHON": str(fake)}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    calls = [line.split() for line in log.read_text().splitlines()]
    assert [c[0] for c in calls] == ["train.py", "train.py", "experiments/oracle_ceiling.py", "-m"]
    stage1, plain = (compose_train(*[o for o in call[1:] if not o.startswith("hydra.")]) for call in calls[:2])
    assert stage1.scene.name == plain.scene.name == "synthetic_360" and not stage1.segmentation
    assert stage1.reconstruction == plain.reconstruction and plain.reconstruction.n_iters == 2000
    assert plain.model.ltqa is None and plain.model.adapter is None             # plain: every part off
    assert calls[3][:2] == ["-m", "laser.lerf_ovs"] and calls[3][2] == f"run={tmp_path / 'out' / 'plain'}"


def test_the_main_command_profile_times_every_phase(tiny_scene, tmp_path):
    from conftest import TINY_STAGE2, TINY_TRAINING

    overrides = [o for o in TINY_TRAINING if o != "logger=none"]
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "profile_main.py"), str(tmp_path / "run"),
                          f"scene.root={tiny_scene}", *overrides, *TINY_STAGE2["laser"]], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    phases = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"build_reconstruction", "stage1 evaluate", "stage2 evaluate", "total"} <= phases.keys()
    assert phases["total"] >= phases["stage1 evaluate"] + phases["stage2 evaluate"]
    assert "miou" in json.loads(out.stdout.strip().splitlines()[-2])


def test_step_benchmark_counts_the_matrix_products_of_a_step(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "experiments"))
    import bench_step

    class Products:
        """A stage whose step is one mm and one addmm of 200 x 300 by 300 x 400 (2 * 2 * 200 * 300 * 400 FLOPs),
        and elementwise work the profiler also counts FLOPs of (4 M of them), which is not a product."""

        def __init__(self):
            self.a, self.b, self.bias = torch.randn(200, 300), torch.randn(300, 400), torch.randn(400)
            self.wide = torch.randn(2000, 2000)

        def train_step(self, step):
            return {"out": (self.a @ self.b) + torch.addmm(self.bias, self.a, self.b), "wide": self.wide * 3.0}

    work = bench_step.matmul_work(Products(), steps=3, first=0)
    assert work["matmul_gflop"] == pytest.approx(4 * 200 * 300 * 400 / 1e9, abs=1e-3)
    assert 0 < work["matmul_s"] <= work["profiled_s"]
