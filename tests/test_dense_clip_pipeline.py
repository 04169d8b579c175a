"""The paper's real path end to end: Laser distilling dense CLIP (SCLIP) features, not the label oracle, on a scene in
the 3D-OVS layout, through stage 1, stage 2 and eval.py, with CLIP loaded from a local checkpoint file."""

import json
import shutil
import subprocess
import sys

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from laser.language.teachers.dense_clip import DenseClipTeacher
from test_train import REPO, TINY, config


def test_dense_clip_teacher_trains_and_evaluates_from_a_clip_checkpoint(tiny_scene, tmp_path):
    scene = tmp_path / "scene"
    shutil.copytree(tiny_scene, scene)
    # The tiny CLIP of another seed than the config's, saved as a weights file: a run that ignored the file would
    # build the seed-0 model instead.
    weights = tmp_path / "tiny_clip.pt"
    saved = instantiate(config(scene).clip, seed=7).model
    torch.save(saved.state_dict(), weights)
    dense = ["teacher_source=clip", "clip=tiny", f"clip.checkpoint={weights}"]

    cfg = config(scene, *dense)
    assert cfg.teacher._target_.endswith("DenseClipTeacher") and cfg.teacher.mode == "sclip"
    loaded = instantiate(cfg.clip).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.state_dict().items())
    assert isinstance(instantiate(cfg.teacher), DenseClipTeacher)

    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "train.py", f"scene.root={scene}", *TINY, *dense,
                          f"stage_store={tmp_path / 'stages'}", f"hydra.run.dir={run_dir}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0 <= result["miou"] <= 1 and result["test_psnr"] > 5
    ran = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert ran.teacher._target_.endswith("DenseClipTeacher") and ran.clip.checkpoint == str(weights)

    out = subprocess.run([sys.executable, "eval.py", f"run={run_dir}", f"out={tmp_path / 'eval'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    table = json.loads((tmp_path / "eval/results.json").read_text())
    assert table[0]["method"] == "laser"
    assert abs(table[0]["miou"] - result["miou"]) < 1e-6                    # stage 2 rebuilt from its checkpoint
