"""The synthetic 360° scene: one orbit of views over a transparent background, in the nerfstudio, Blender, 3D-OVS and
LERF-OVS layouts at once; and every method's stage 2 on it."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from laser.data.blender import load_blender_scene
from laser.data.captures import is_forward_facing
from laser.data.nerfstudio import load_nerfstudio_scene, read_nerfstudio
from laser.data.synthetic_360 import CLASSES_360, LOOK_AT, ORBIT_OBJECTS, generate_360, orbit_poses, outlines
from laser.evaluation.lerf_ovs import read_annotations


@pytest.fixture(scope="session")
def tiny_360(tmp_path_factory) -> Path:
    """64x48, 16 views, 2 annotated; shared by the session, not to be modified."""
    return generate_360(tmp_path_factory.mktemp("tiny360") / "tiny360", width=64, height=48, views=16, annotated=2)


def test_the_cameras_circle_the_table_once_looking_at_it():
    c2w = orbit_poses(12)
    centres = c2w[:, :, 3]
    azimuth = np.degrees(np.arctan2(centres[:, 0], centres[:, 2])) % 360
    assert np.allclose(np.diff(np.sort(azimuth)), 30.0)
    assert not is_forward_facing(c2w)
    forward = -c2w[:, :, 2]
    to_centre = LOOK_AT - centres
    assert np.allclose((forward * to_centre).sum(1) / np.linalg.norm(to_centre, axis=1), 1.0)
    elevation = np.degrees(np.arcsin(-forward[:, 1]))
    assert 19.9 < elevation.min() and elevation.max() < 40.1
    assert np.allclose(np.linalg.det(c2w[:, :, :3]), 1.0)


def test_the_nerfstudio_and_blender_layouts_hold_the_same_views(tiny_360):
    nerfstudio = load_nerfstudio_scene(tiny_360, ray_space="world")
    blender = load_blender_scene(tiny_360, near_far=(0.1, 10.0), aabb=((-3.0,) * 3, (3.0,) * 3))
    assert not nerfstudio.ndc and nerfstudio.white_background and not nerfstudio.score_unlabelled
    assert blender.white_background and not blender.score_unlabelled
    assert nerfstudio.classes == blender.classes == sorted(CLASSES_360)
    # Blender lists the training frames first; both hold out every 8th view.
    order = [nerfstudio.image_paths.index(p) for p in blender.image_paths]
    assert sorted(order) == list(range(16))
    assert [order[v] for v in blender.test_views] == nerfstudio.test_views == [0, 8]
    assert torch.allclose(blender.images, nerfstudio.images[order], atol=1e-6)
    assert torch.equal(blender.labels, nerfstudio.labels[order])
    # The Blender poses are the generator's; nerfstudio's reader normalised them (+z up, unit orbit).
    assert np.allclose(blender.c2w.numpy(), orbit_poses(16)[order], atol=1e-5)
    assert torch.allclose(nerfstudio.c2w[:, :, 3].norm(dim=1), torch.ones(16), atol=1e-5)


def test_labels_masks_and_the_transparent_background_agree(tiny_360):
    scene = load_nerfstudio_scene(tiny_360)
    assert scene.annotated_views == [4, 12]
    for view in range(scene.num_views):
        alpha = np.asarray(Image.open(scene.image_paths[view]))[..., 3]
        background = scene.labels[view] < 0
        assert background.any() and (~background).any()
        assert (alpha[background.numpy()] < 255).all()                   # no sample of a missed pixel centre hit
        assert torch.all(scene.images[view][torch.from_numpy(alpha == 0)] == 1.0)      # over white
    for view, masks in scene.annotations.items():
        assert torch.equal(masks.float().argmax(-1)[masks.any(-1)], scene.labels[view][masks.any(-1)])
        assert torch.equal(masks.any(-1), scene.labels[view] >= 0)


def test_the_lerf_ovs_labels_give_the_objects_masks_back(tiny_360):
    scene = load_nerfstudio_scene(tiny_360)
    annotations = read_annotations(tiny_360 / "lerf_ovs", scene.image_paths, (scene.width, scene.height))
    assert sorted(annotations) == scene.annotated_views
    for view, targets in annotations.items():
        frame = json.loads((tiny_360 / "lerf_ovs" / f"{Path(scene.image_paths[view]).stem}.json").read_text())
        assert frame["info"] == {"name": f"frame_{view + 1:05d}.jpg", "width": 64, "height": 48}
        assert "wooden table" not in targets and targets
        for phrase, target in targets.items():
            truth = scene.annotations[view][..., scene.classes.index(phrase)]
            # Outer boundaries only: holes (a handle's gap) fill, so the polygons may only add pixels.
            assert (truth & ~target.mask).sum() == 0
            assert (target.mask & ~truth).sum() <= 0.05 * truth.sum()
            rows, cols = torch.nonzero(truth, as_tuple=True)
            low, high = target.boxes[:, :2].min(0).values, target.boxes[:, 2:].max(0).values
            assert low.tolist() == [cols.min().item(), rows.min().item()]
            assert high.tolist() == [cols.max().item(), rows.max().item()]


def test_outlines_are_the_outer_boundaries_of_each_piece():
    mask = np.zeros((12, 16), dtype=bool)
    mask[1:7, 1:7] = True
    mask[3:5, 3:5] = False                       # a hole: filled
    mask[8:11, 10:15] = True                     # a second piece, touching nothing
    mask[0, 15] = True                           # one pixel: below min_pixels
    pieces = outlines(mask)
    assert [box for _, box in pieces] == [[1, 1, 6, 6], [10, 8, 14, 10]] or \
        [box for _, box in pieces] == [[10, 8, 14, 10], [1, 1, 6, 6]]
    for polygon, box in pieces:
        xs, ys = zip(*polygon)
        assert (min(xs), min(ys), max(xs), max(ys)) == tuple(box)


def test_the_scene_is_regenerated_only_when_its_parameters_change(tiny_360, tmp_path, capsys):
    out = generate_360(tmp_path / "s", width=32, height=24, views=8, annotated=1)
    stamp = (out / "transforms.json").stat().st_mtime_ns
    generate_360(out, width=32, height=24, views=8, annotated=1)
    assert (out / "transforms.json").stat().st_mtime_ns == stamp and "already exists" in capsys.readouterr().out
    generate_360(out, width=32, height=24, views=9, annotated=1)
    assert len(read_nerfstudio(out).image_paths) == 9


def test_the_box_holds_the_tallest_object(tiny_360):
    """The box comes from the points (a flat scene: most lie on the table top), and must not cut the vase."""
    scene = load_nerfstudio_scene(tiny_360)
    capture = read_nerfstudio(tiny_360)
    vase = next(o for o in ORBIT_OBJECTS if o.prompt == "blue vase").primitives[0]
    top = vase.center[1] + vase.size[1] - LOOK_AT[1]             # above the orbit's centre, generator units
    scale = 1.0 / np.linalg.norm(capture.c2w[:, :, 3] - LOOK_AT, axis=1).max()
    assert scene.aabb[1, 2].item() > top * scale
    assert math.isclose(scale, 1 / 4.8, rel_tol=1e-6)


METHODS = {
    "laser": ["model.cross_start_iter=2", "model.schedule.joint_start_iter=1", "model.schedule.n_iters=4"],
    "laser_stable": ["model=laser_stable", "model.schedule.n_iters=3"],
    "ovs3d": ["model=ovs3d", "model.supervision.use_dino=false", "model.schedule.n_iters=3",
              "model.supervision.batch_size=64", "model.schedule.joint_start_iter=2",
              "model.supervision.patch_size=32", "model.supervision.patch_num=2"],
    "lerf": [],
    "laser_dense_clip": ["teacher_source=clip", "clip=tiny", "model.schedule.n_iters=2"],   # the dense CLIP teacher
}


@pytest.fixture(scope="module")
def runs_360(tiny_360, tmp_path_factory):
    """Every method trained (tiny) on the 360° scene through the training loop, stage 1 shared."""
    from conftest import TINY_STAGE2, TINY_TRAINING
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from laser.training.loop import train

    root = tmp_path_factory.mktemp("runs360")
    conf = Path(__file__).resolve().parents[1] / "conf"
    runs = {}
    for method, overrides in METHODS.items():
        base = TINY_STAGE2["lerf" if method == "lerf" else "laser"]
        with initialize_config_dir(config_dir=str(conf), version_base=None):
            cfg = compose("train", overrides=["scene=synthetic_360", f"scene.root={tiny_360}",
                                              f"stage_store={root / 'stages'}", *TINY_TRAINING, *base, *overrides])
        run_dir = root / method
        result = train(cfg, run_dir)
        (run_dir / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
        runs[method] = (run_dir, result)
    return runs


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_and_is_scored_on_the_360_scene(runs_360, method):
    run_dir, result = runs_360[method]
    assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["accuracy"] <= 1.0
    saved = json.loads(next(p for p in run_dir.glob("*/test/metrics.json")
                            if p.parts[-3] != "reconstruction").read_text())
    assert saved["views"] == [4, 12] and len(saved["per_view_iou"][0]) == len(CLASSES_360)


def test_the_lerf_ovs_tool_scores_a_trained_360_run(runs_360, tiny_360, tmp_path):
    from laser.lerf_ovs import LerfOvsOptions, evaluate

    for method in ("laser", "lerf"):
        result = evaluate(LerfOvsOptions(run=str(runs_360[method][0]), labels=str(tiny_360 / "lerf_ovs"),
                                         out=str(tmp_path / method)))
        frames = [json.loads(p.read_text()) for p in sorted((tiny_360 / "lerf_ovs").glob("*.json"))]
        assert result["pairs"] == sum(len({o["category"] for o in f["objects"]}) for f in frames)
        assert 0.0 <= result["localization_accuracy"] <= 1.0 and 0.0 <= result["miou"] <= 1.0
        assert json.loads((tmp_path / method / "metrics.json").read_text())["miou"] == result["miou"]
        assert len(list((tmp_path / method / "relevancy").glob("*.png"))) == result["pairs"]
