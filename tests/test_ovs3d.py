"""3D-OVS's stage 2 on the tiny synthetic scene: through the training loop with the oracle pyramid, the tiny-CLIP
pyramid, the teacher-interface check, checkpoint resumption and the DINO patch branch (with a stand-in extractor)."""

import copy
import math
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from laser.errors import ConfigError
from laser.language.teachers.oracle import OraclePixelPyramid
from laser.language.teachers.pyramid_clip import PixelPyramidClip
from laser.training.build import build_reconstruction, build_segmentation, prepare_segmentation
from laser.training.loop import fit, read_figures
from laser.training.run import setup_run
from test_laser_stage import config as laser_config
from test_laser_stage import run_both
from test_regression import OVS3D


def config(root, *extra):
    return laser_config(root, *extra, stage2=False)


@pytest.fixture(scope="module")
def stage1(tiny_scene, tmp_path_factory):
    """The tiny scene and its 4-step stage-1 field, shared: each stage 2 gets a copy of the field."""
    cfg = config(tiny_scene, *OVS3D)
    run = setup_run(cfg, tmp_path_factory.mktemp("stage1"))
    reconstruction, identity = build_reconstruction(cfg, run.device)
    fit(reconstruction, run, cfg, identity, "stage1")
    return reconstruction.scene, reconstruction.field, run.device


def stages(cfg, stage1, count=1):
    """``count`` identically initialised, untrained 3D-OVS stages on copies of the stage-1 field, sharing one
    prepared teacher."""
    scene, field, device = stage1
    prepared = prepare_segmentation(cfg, scene)
    built = []
    for _ in range(count):
        torch.manual_seed(0)
        built.append(build_segmentation(cfg, prepared, copy.deepcopy(field), device)[0])
    return built


class FakeDino(nn.Module):
    """Stands in for DINO ViT-B/8: 8x8 block means of the colours, 3 channels."""

    patch_size = 8

    def forward(self, images):
        return F.avg_pool2d(images.permute(0, 3, 1, 2), 8).permute(0, 2, 3, 1)


def test_ovs3d_trains_on_the_oracle_pyramid_and_evaluates(tiny_scene, tmp_path):
    stage, metrics = run_both(config(tiny_scene, *OVS3D), tmp_path / "run")
    assert stage.name == "ovs3d" and isinstance(stage.teacher, OraclePixelPyramid)
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["accuracy"] <= 1.0
    assert (tmp_path / "run/ovs3d/test/metrics.json").is_file()
    assert stage.joint                                              # appearance fine-tuned from joint_start_iter
    supervision = stage.supervision
    assert len(supervision.views) == round(len(stage.scene.train_views) / 2)
    # The pyramid is 4x smaller than the images (conf/tuning/ovs3d/synthetic.yaml): one relevancy map per view.
    assert supervision.relevancy.shape == (len(supervision.views), 3, len(stage.scene.classes), 12, 16)
    logged = read_figures(stage.train_step(5))
    assert set(logged) == {"loss", "rgb_mse", "feature", "relevancy"}                   # no DINO: no patch branch
    assert logged["loss"] == pytest.approx(logged["rgb_mse"] + logged["feature"] + logged["relevancy"], rel=1e-5)
    assert -1.0 <= logged["feature"] <= 1.0 and 0.0 <= logged["relevancy"] <= 0.7     # JS is at most log 2
    pi = stage.render(supervision.sample(stage.teacher)["rays"], train=True)["scales"]
    torch.testing.assert_close(pi.sum(-1), torch.ones(len(pi)))                           # a distribution over scales


def test_ovs3d_trains_on_the_clip_pyramid(tiny_scene, stage1):
    # 4x5 pyramid images, crops of 4, 2 and 1 px without overlap: 28 crops per view through CLIP.
    cfg = config(tiny_scene, *OVS3D, "teacher_source=clip", "clip=tiny", "teacher.image_downsample=12",
                 "teacher.divisors=[1,2,4]", "teacher.stride_fraction=1.0")
    (stage,) = stages(cfg, stage1)
    assert isinstance(stage.teacher, PixelPyramidClip) and stage.teacher.maps(0).shape == (3, 512, 4, 5)
    for step in range(2):
        logged = read_figures(stage.train_step(step))
    assert all(math.isfinite(v) for v in logged.values())
    view = stage.eval_scene.annotated_views[0]
    scores, _ = stage.class_scores(view)
    assert scores.shape == (48, 64, len(stage.scene.classes))
    strided, rgb = stage.class_scores(view, stride=2)          # every other pixel: the same rays, rendered alone
    torch.testing.assert_close(strided, scores[::2, ::2])
    assert rgb.shape == (24, 32, 3)


def test_a_teacher_of_another_interface_is_refused_before_it_is_prepared(tiny_scene, stage1):
    with pytest.raises(ConfigError, match="ovs3d learns from a PixelPyramidTeacher .* OracleTeacher is not one"):
        stages(config(tiny_scene, *OVS3D, "teacher=oracle/laser"), stage1)


def test_too_small_a_pyramid_is_refused(tiny_scene, stage1):
    with pytest.raises(ValueError, match="too small for crops"):
        stages(config(tiny_scene, *OVS3D, "teacher.image_downsample=8"), stage1)


def test_resumed_training_matches_an_uninterrupted_one(tiny_scene, stage1):
    straight, first, resumed = stages(config(tiny_scene, *OVS3D), stage1, count=3)
    for step in range(5):
        straight.train_step(step)
    for step in range(2):
        first.train_step(step)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    for step in range(2, 5):                                            # crosses joint_start_iter = 3
        resumed.train_step(step)
    for name, module in straight.modules().items():
        for (key, a), b in zip(module.state_dict().items(), resumed.modules()[name].state_dict().values()):
            torch.testing.assert_close(a, b, msg=f"{name}.{key}")
    for (key, a), b in zip(straight.field.state_dict().items(), resumed.field.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"field.{key}")


def test_patch_branch_runs_only_with_a_dino_extractor(tiny_scene, stage1, tmp_path, capsys):
    missing = tmp_path / "dino.pth"
    cfg = config(tiny_scene, *OVS3D, "model.supervision.use_dino=true", f"model.supervision.dino_weights={missing}")
    (stage,) = stages(cfg, stage1)
    assert set(stage.train_step(0)) == {"loss", "rgb_mse", "feature", "relevancy"}      # no weights: no branch
    assert "DINO weights not found" in capsys.readouterr().out
    stage.supervision.dino = FakeDino()
    before = [p.clone() for p in stage.head.parameters()]
    logged = read_figures(stage.train_step(1))
    assert logged["dino_pos"] >= 0.0 >= logged["dino_neg"]
    expected = (logged["rgb_mse"] + logged["feature"] + logged["relevancy"] + 200 * logged["dino_pos"]
                + 0.2 * logged["dino_neg"])
    assert logged["loss"] == pytest.approx(expected, rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, stage.head.parameters()))
