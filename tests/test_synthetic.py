"""The synthetic benchmark scene: layout, determinism, ground truth, cameras, atomic writes and the CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from laser.data.llff import load_llff_scene
from laser.data.rays import llff_to_opengl, pixel_directions
from laser.data.synthetic import (CLASSES, annotated_views, camera_poses, ensure_scene, focal_length, generate,
                                  layout_classes, scene_objects, trace)

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT, VIEWS, ANNOTATED, SEED = 96, 72, 8, 3, 3


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic") / "scene", seed=SEED, width=WIDTH, height=HEIGHT,
                    views=VIEWS, annotated=ANNOTATED)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def labels_of(scene: Path) -> np.ndarray:
    """``[V, H, W]`` uint8 label maps (1-based index into classes.txt as written)."""
    return np.stack([read_png(p) for p in sorted((scene / "labels").iterdir())])


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_shapes(scene):
    images = sorted((scene / "images").iterdir())
    assert [p.name for p in images] == [f"{v:02d}.png" for v in range(VIEWS)]
    for path in images:
        image = read_png(path)
        assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    assert sorted(p.name for p in (scene / "labels").iterdir()) == [p.name for p in images]
    assert labels_of(scene).shape == (VIEWS, HEIGHT, WIDTH)

    poses_bounds = np.load(scene / "poses_bounds.npy")
    assert poses_bounds.shape == (VIEWS, 17) and poses_bounds.dtype == np.float64
    hwf = poses_bounds[:, :15].reshape(-1, 3, 5)[:, :, 4]
    np.testing.assert_allclose(hwf, np.tile([HEIGHT, WIDTH, focal_length(WIDTH)], (VIEWS, 1)))
    near, far = poses_bounds[:, 15], poses_bounds[:, 16]
    assert (near > 0).all() and (far > near).all()
    assert 2.0 < far.max() / near.min() < 4.0          # parallax: objects at clearly different depths

    written = (scene / "segmentations" / "classes.txt").read_text().splitlines()
    assert written == list(CLASSES) and len(written) >= 8
    assert written != sorted(written)                   # the loader must sort them itself
    folders = sorted(p for p in (scene / "segmentations").iterdir() if p.is_dir())
    assert [int(p.name) for p in folders] == annotated_views(VIEWS, ANNOTATED)
    assert len(folders) == ANNOTATED
    for folder in folders:
        assert sorted(p.stem for p in folder.iterdir()) == sorted(CLASSES)
        for path in folder.iterdir():
            mask = read_png(path)
            assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255}

    info = json.loads((scene / "synthetic.json").read_text())
    assert (info["seed"], info["width"], info["height"], info["views"], info["annotated"]) == (
        SEED, WIDTH, HEIGHT, VIEWS, ANNOTATED)
    assert info["classes"] == list(CLASSES)


def test_annotated_views_are_spread():
    assert annotated_views(24, 4) == [3, 9, 15, 21]
    assert annotated_views(3, 5) == [0, 1, 2]


def test_deterministic_and_seed_dependent(tmp_path):
    kwargs = dict(width=32, height=24, views=3, annotated=1)
    first = tree_bytes(generate(tmp_path / "a", seed=1, **kwargs))
    assert first == tree_bytes(generate(tmp_path / "b", seed=1, **kwargs))
    other = tree_bytes(generate(tmp_path / "c", seed=2, **kwargs))
    assert other.keys() == first.keys()
    assert other["images/00.png"] != first["images/00.png"]
    assert other["segmentations/classes.txt"] == first["segmentations/classes.txt"]


def test_masks_are_the_label_maps(scene):
    labels = labels_of(scene)
    for view in annotated_views(VIEWS, ANNOTATED):
        for k, prompt in enumerate(CLASSES, start=1):
            mask = read_png(scene / "segmentations" / f"{view:02d}" / f"{prompt}.png")
            np.testing.assert_array_equal(mask == 255, labels[view] == k)


def test_every_pixel_and_every_class_is_labelled(scene):
    labels = labels_of(scene)
    assert labels.min() >= 1                                            # no unlabelled pixel
    assert set(np.unique(labels)) == set(range(1, len(CLASSES) + 1))   # every class is seen
    for view in annotated_views(VIEWS, ANNOTATED):                       # and in the evaluated views
        assert len(np.unique(labels[view])) >= len(CLASSES) - 1


def test_look_alike_classes(scene):
    images = np.stack([read_png(p) for p in sorted((scene / "images").iterdir())]) / 255.0
    labels = labels_of(scene)
    mean = {k: images[labels == k].mean(0) for k in range(1, len(CLASSES) + 1)}
    pairs = [(a, b) for a, b in itertools.combinations(mean, 2) if np.linalg.norm(mean[a] - mean[b]) < 0.15]
    assert len(pairs) >= 2, "colour alone must not separate every class"
    view = annotated_views(VIEWS, ANNOTATED)[0]
    for a, b in pairs:
        mask_a = read_png(scene / "segmentations" / f"{view:02d}" / f"{CLASSES[a - 1]}.png") == 255
        mask_b = read_png(scene / "segmentations" / f"{view:02d}" / f"{CLASSES[b - 1]}.png") == 255
        assert mask_a.any() and mask_b.any() and not (mask_a & mask_b).any()


def test_poses_round_trip_through_the_loader_convention(scene):
    poses_bounds = np.load(scene / "poses_bounds.npy")
    c2w = llff_to_opengl(poses_bounds[:, :15].reshape(-1, 3, 5))
    np.testing.assert_allclose(c2w, camera_poses(VIEWS), atol=1e-12)
    rotations = c2w[:, :, :3]
    np.testing.assert_allclose(rotations.transpose(0, 2, 1) @ rotations, np.tile(np.eye(3), (VIEWS, 1, 1)),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0)
    centres = c2w[:, :, 3]
    assert np.ptp(centres[:, 2]) < 1e-12                               # a planar rig...
    assert 0.4 < np.ptp(centres[:, 0]) < 1.0                            # ...with a real baseline
    assert (c2w[:, 2, 2] > 0.9).all()                                   # all looking down -z (forward-facing)


def pixel_rays(c2w: np.ndarray, focal: float) -> tuple[np.ndarray, np.ndarray]:
    """World rays ``[H*W, 3]`` through the pixel centres, built with the loader's own direction function."""
    dirs = pixel_directions(HEIGHT, WIDTH, focal, focal).double().numpy().reshape(-1, 3)
    return c2w[:, 3], dirs @ c2w[:, :3].T


def test_labels_and_bounds_match_the_geometry(scene):
    """Pixel-centre labels are the classes hit by the loader's rays, and near/far bound every visible depth."""
    poses_bounds = np.load(scene / "poses_bounds.npy")
    c2w = llff_to_opengl(poses_bounds[:, :15].reshape(-1, 3, 5))
    objects, _ = scene_objects(SEED)
    labels = labels_of(scene)
    for view in (0, VIEWS - 1):
        t, label, _ = trace(objects, *pixel_rays(c2w[view], poses_bounds[view, 14]))
        np.testing.assert_array_equal(label.reshape(HEIGHT, WIDTH), labels[view])
        assert poses_bounds[view, 15] < t.min() and t.max() < poses_bounds[view, 16]


def test_labels_are_consistent_across_views(scene):
    """A surface point seen in view A projects, with the pinhole model, onto a pixel of view B with its label."""
    poses_bounds = np.load(scene / "poses_bounds.npy")
    c2w = llff_to_opengl(poses_bounds[:, :15].reshape(-1, 3, 5))
    focal = poses_bounds[0, 14]
    objects, _ = scene_objects(SEED)
    labels = labels_of(scene)
    checked = 0
    for a, b in [(0, VIEWS - 1), (VIEWS // 2, 1), (2, 5)]:
        origin, dirs = pixel_rays(c2w[a], focal)
        t, label, _ = trace(objects, origin, dirs)
        points = origin + t[:, None] * dirs
        cam = (points - c2w[b, :, 3]) @ c2w[b, :, :3]                   # world -> camera b: R^T (p - c)
        col = np.floor(focal * cam[:, 0] / -cam[:, 2] + WIDTH / 2).astype(int)
        row = np.floor(-focal * cam[:, 1] / -cam[:, 2] + HEIGHT / 2).astype(int)
        inside = (col >= 0) & (col < WIDTH) & (row >= 0) & (row < HEIGHT)
        assert inside.mean() > 0.8
        agree = labels[b][row[inside], col[inside]] == label[inside]
        # Disagreements come only from occlusion and from points near a silhouette.
        assert agree.mean() > 0.95, (a, b, agree.mean())
        # Every object, not only the large wall and table, is seen consistently.
        for k in np.unique(label[inside]):
            assert agree[label[inside] == k].mean() > 0.8, (a, b, CLASSES[k - 1])
        checked += inside.sum()
    assert checked > 10_000


def test_loads_with_the_project_loader(scene):
    loaded = load_llff_scene(scene)
    assert loaded.num_views == VIEWS and (loaded.height, loaded.width) == (HEIGHT, WIDTH)
    assert loaded.classes == sorted(CLASSES)
    assert loaded.annotated_views == annotated_views(VIEWS, ANNOTATED)
    assert loaded.labels is not None and (loaded.labels >= 0).all()
    for view, masks in loaded.annotations.items():
        assert torch.equal(masks, torch.nn.functional.one_hot(loaded.labels[view], len(CLASSES)).bool())


def test_existing_scene_is_kept_unless_forced(tmp_path, capsys):
    kwargs = dict(width=24, height=16, views=3, annotated=1)
    out = generate(tmp_path / "scene", **kwargs)
    marker = out / "marker"
    marker.write_text("kept")
    assert generate(out, **kwargs) == out and marker.exists()
    assert "exists" in capsys.readouterr().out
    assert ensure_scene(out, **kwargs) == out and marker.exists()
    generate(out, force=True, **kwargs)
    assert not marker.exists() and (out / "synthetic.json").is_file()
    marker.write_text("stale")
    ensure_scene(out, **(kwargs | {"seed": 5}))                          # other parameters: replaced
    assert not marker.exists() and json.loads((out / "synthetic.json").read_text())["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]      # no temporary folder left behind


def test_foreign_folder_is_never_overwritten(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "poses_bounds.npy").write_bytes(b"real data")
    with pytest.raises(FileExistsError):
        generate(tmp_path / "data", width=24, height=16, views=3)
    assert (tmp_path / "data" / "poses_bounds.npy").read_bytes() == b"real data"


def test_failed_run_leaves_nothing(tmp_path, monkeypatch):
    import laser.data.synthetic as synthetic

    def broken(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(synthetic, "render_view", broken)
    with pytest.raises(RuntimeError):
        generate(tmp_path / "scene", width=24, height=16, views=3)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "laser.data.synthetic", "--out", str(out), "--width", "64",
                             "--height", "48", "--views", "6"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(list((out / "images").iterdir())) == 6
    assert read_png(out / "images" / "05.png").shape == (48, 64, 3)
    assert np.load(out / "poses_bounds.npy").shape == (6, 17)


def test_the_desk_layout_has_its_own_objects_all_visible(tmp_path):
    desk = generate(tmp_path / "desk", seed=0, width=96, height=72, views=4, annotated=1, layout="desk")
    written = (desk / "segmentations" / "classes.txt").read_text().splitlines()
    assert written == list(layout_classes("desk")) and not set(written) & set(CLASSES)
    assert written != sorted(written)
    assert set(np.unique(labels_of(desk))) == set(range(1, len(written) + 1))        # every object is seen
    assert json.loads((desk / "synthetic.json").read_text())["layout"] == "desk"
    # Another layout at the same folder is another scene: it is regenerated, not taken for the first.
    generate(tmp_path / "desk", seed=0, width=96, height=72, views=4, annotated=1)
    assert (desk / "segmentations" / "classes.txt").read_text().splitlines() == list(CLASSES)
    with pytest.raises(ValueError, match="unknown synthetic layout 'attic'"):
        generate(tmp_path / "attic", layout="attic")
