"""Hydra sweeps: the ablation experiment shares one stage 1 and eval.py turns the sweep into the ablation table."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

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
