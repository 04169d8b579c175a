"""LERF's stage 2 through the training loop on the tiny synthetic scene: pyramid CLIP teacher of the tiny random CLIP,
a random tiny DINO, two query scales."""

import io
import json
from pathlib import Path

import laser  # noqa: F401  (before timm: torchvision must import on CPU torch)
import pytest
import timm
import torch
from hydra import compose, initialize_config_dir

from laser.language import dino as dino_module
from laser.language.dino import DinoExtractor
from laser.training.build import build_reconstruction, build_segmentation, prepare_segmentation
from laser.training.loop import fit
from laser.training.run import setup_run
from test_laser_stage import STAGE1
from test_regression import LERF  # two pyramid layers of large crops (3/4 and all of the image height)

REPO = Path(__file__).resolve().parents[1]


def config(root, *extra):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("train", overrides=[f"scene.root={root}", *STAGE1, *LERF, *extra])


@pytest.fixture(scope="module")
def stage1(tiny_scene, tmp_path_factory):
    """Stage 1 and the prepared teacher, shared by the tests: LERF leaves the field as it finds it (checked below)."""
    cfg = config(tiny_scene)
    run = setup_run(cfg, tmp_path_factory.mktemp("lerf") / "run")
    reconstruction, identity = build_reconstruction(cfg, run.device)
    fit(reconstruction, run, cfg, identity, "stage1")
    return run, reconstruction.field, prepare_segmentation(cfg, reconstruction.scene)


@pytest.fixture
def tiny_dino(monkeypatch):
    """A random ViT-S/8-shaped DINO of 2 blocks and 32 channels in place of the real weights."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0, dynamic_img_size=True,
                            depth=2, embed_dim=32, num_heads=1)
    monkeypatch.setattr(dino_module, "load_dino", lambda path, model: DinoExtractor(vit))


def test_lerf_trains_frozen_field_and_evaluates(tiny_scene, stage1, tiny_dino):
    run, field, prepared = stage1
    cfg = config(tiny_scene)
    stage, identity = build_segmentation(cfg, prepared, field, run.device)
    field_before = {k: v.clone() for k, v in stage.field.state_dict().items()}
    first = stage.train_step(0)
    assert set(first) == {"loss", "language", "dino"} and 0.0 <= first["language"] <= 2.0
    metrics = fit(stage, run, cfg, identity, "stage2")
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["accuracy"] <= 1.0
    saved = json.loads((run.dir / "lerf/test/metrics.json").read_text())
    assert saved["views"] == sorted(stage.eval_scene.annotations)
    assert all(torch.equal(v, field_before[k]) for k, v in stage.field.state_dict().items())
    assert not stage.joint                                     # LERF never fine-tunes the radiance field
    scores, rgb = stage.class_scores(saved["views"][0])
    assert scores.shape == (48, 64, len(stage.scene.classes)) and rgb.shape == (48, 64, 3)
    assert ((scores > 0) & (scores < 1)).all()
    assert stage.class_scores(saved["views"][0], stride=3)[0].shape == (16, 22, len(stage.scene.classes))


def test_lerf_resumes_bit_exactly_and_trains_without_dino(tiny_scene, stage1):
    run, field, prepared = stage1
    cfg = config(tiny_scene, "model.supervision.use_dino=false", "model.language_field.backbone=appearance")
    first, _ = build_segmentation(cfg, prepared, field, run.device)
    for step in range(2):
        assert set(first.train_step(step)) == {"loss", "language"}
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    second, _ = build_segmentation(cfg, prepared, field, run.device)
    second.load_state_dict(state)
    assert first.train_step(2) == second.train_step(2)
    for a, b in zip(first.language.parameters(), second.language.parameters()):
        assert torch.equal(a, b)
    state["build"] = {**state["build"], "dino": True}
    with pytest.raises(ValueError, match="trained with"):
        second.load_state_dict(state)


def test_bad_lerf_settings_are_refused(tiny_scene, stage1):
    run, field, prepared = stage1
    with pytest.raises(ValueError, match="scale_min <= scale_max"):
        prepare_segmentation(config(tiny_scene, "teacher.scale_min=1.5"), prepared.scene)
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_segmentation(config(tiny_scene, "model.language_field.backbone=tensorf"), prepared, field, run.device)


def test_the_query_composites_the_last_hidden_layer_exactly(tiny_scene, stage1, tiny_dino):
    """query_render + query_scores (the hidden layer composited, the last linear layer per ray, any phrase) equal the
    per-point reference render + select_scale to float rounding, for the class prompts and for another phrase."""
    run, field, prepared = stage1
    stage, _ = build_segmentation(config(tiny_scene), prepared, field, run.device)
    for _ in range(3):
        stage.train_step(0)
    rays = stage.eval_rays(stage.eval_scene.annotated_views[0], stride=2).reshape(-1, 6)
    other = prepared.encoder(["a phrase the scene never saw"])
    with torch.no_grad(), stage.evaluating():
        reference = stage.render(rays)["relevancy"]                                     # [R, S, C]
        rendered = stage.query_render(rays)
        stage.text = torch.cat([stage.text, other])
        widened = stage.render(rays)["relevancy"]
    from laser.modules.relevancy_query import select_scale
    assert rendered["hidden"].shape[:2] == (len(rays), len(stage.query_scales)) and reference.std() > 1e-3
    assert torch.allclose(stage.query_scores(rendered, stage.text[:-1]), select_scale(reference.transpose(0, 1))[1],
                          atol=2e-6)
    assert torch.allclose(stage.query_scores(rendered, other), select_scale(widened.transpose(0, 1))[1][:, -1:],
                          atol=2e-6)
    assert torch.equal(rendered["rgb"], stage.render(rays)["rgb"])
