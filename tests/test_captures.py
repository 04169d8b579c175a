"""Users' own captures: nerfstudio's transforms.json and COLMAP models, read into the same scenes as LLFF's.

The fixtures re-express the tiny synthetic scene (an LLFF-layout capture with known poses) in each format, so
each reader must give back exactly the cameras and rays the LLFF loader gives."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from laser.data.captures import Capture, capture_scene, focus_point, is_forward_facing
from laser.data.colmap import load_colmap_scene
from laser.data.llff import load_llff_scene, read_poses_bounds
from laser.data.nerfstudio import load_nerfstudio_scene
from laser.data.rays import llff_to_opengl
from laser.errors import DataError


def llff_cameras(root: Path):
    """The tiny scene's OpenGL poses in its own frame, focal length, image size and nearest bound."""
    images = sorted((root / "images").iterdir())
    poses, hwf, bounds = read_poses_bounds(root / "poses_bounds.npy", len(images))
    return images, llff_to_opengl(poses), float(hwf[2]), (int(hwf[1]), int(hwf[0])), float(bounds.min())


def as_capture(tiny_scene: Path, folder: Path) -> Path:
    """A copy of the tiny scene's images and segmentations, without its LLFF pose file."""
    shutil.copytree(tiny_scene / "images", folder / "images")
    shutil.copytree(tiny_scene / "segmentations", folder / "segmentations")
    return folder


@pytest.fixture
def nerfstudio_capture(tiny_scene, tmp_path):
    root = as_capture(tiny_scene, tmp_path / "ns")
    images, c2w, focal, (width, height), _ = llff_cameras(tiny_scene)
    frames = [{"file_path": f"images/{p.name}", "transform_matrix": [*pose.tolist(), [0, 0, 0, 1]]}
              for p, pose in zip(images, c2w)]
    meta = {"fl_x": focal, "fl_y": focal, "cx": width / 2, "cy": height / 2, "w": width, "h": height,
            "camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
            "applied_transform": np.eye(4)[:3].tolist(), "frames": frames[::-1]}      # any frame order
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def write_colmap_text(root: Path, images, c2w, focal, size, points=None) -> Path:
    """A COLMAP text model of these cameras (the documented format), and the same model in binary via pycolmap."""
    from scipy.spatial.transform import Rotation

    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    (model / "cameras.txt").write_text(f"# Camera list\n1 PINHOLE {size[0]} {size[1]} {focal} {focal} "
                                       f"{size[0] / 2} {size[1] / 2}\n")
    lines = ["# Image list"]
    for index, (path, pose) in enumerate(zip(images, c2w), start=1):
        opencv = pose.copy()
        opencv[:, 1:3] *= -1
        rotation = opencv[:, :3].T                                       # cam_from_world
        translation = -rotation @ opencv[:, 3]
        x, y, z, w = Rotation.from_matrix(rotation).as_quat()
        lines += [f"{index} {w} {x} {y} {z} {' '.join(map(str, translation))} 1 {path.name}", ""]
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    rows = [f"{i + 1} {p[0]} {p[1]} {p[2]} 128 128 128 0.5" for i, p in enumerate(points if points is not None else [])]
    (model / "points3D.txt").write_text("# 3D point list\n" + "\n".join(rows) + ("\n" if rows else ""))
    return model


@pytest.fixture
def colmap_capture(tiny_scene, tmp_path):
    root = as_capture(tiny_scene, tmp_path / "colmap")
    images, c2w, focal, size, _ = llff_cameras(tiny_scene)
    write_colmap_text(root, images, c2w, focal, size)
    return root


def assert_same_scene(scene, reference):
    assert torch.allclose(scene.c2w, reference.c2w, atol=1e-5)
    assert scene.fx == pytest.approx(reference.fx) and scene.fy == pytest.approx(reference.fy)
    assert torch.equal(scene.images, reference.images) and scene.ndc and reference.ndc
    assert torch.allclose(scene.rays(3), reference.rays(3), atol=1e-5)
    assert scene.classes == reference.classes and scene.annotated_views == reference.annotated_views
    assert all(torch.equal(scene.annotations[v], reference.annotations[v]) for v in scene.annotated_views)


def test_a_nerfstudio_capture_gives_the_llff_loaders_cameras_and_rays(tiny_scene, nerfstudio_capture):
    near = llff_cameras(tiny_scene)[4]
    reference = load_llff_scene(tiny_scene, holdout_every=4, load_labels=False)
    scene = load_nerfstudio_scene(nerfstudio_capture, near=near, holdout_every=4)
    assert_same_scene(scene, reference)
    assert scene.test_views == reference.test_views and scene.near_far == reference.near_far
    half = load_nerfstudio_scene(nerfstudio_capture, downsample=2, near=near, ray_space="ndc")
    assert half.images.shape[1:3] == (24, 32) and half.fx == pytest.approx(reference.fx / 2)


@pytest.mark.parametrize("binary", [False, True])
def test_a_colmap_model_gives_the_llff_loaders_cameras_and_rays(tiny_scene, colmap_capture, binary):
    pycolmap = pytest.importorskip("pycolmap")
    model = colmap_capture / "sparse" / "0"
    if binary:
        reconstruction = pycolmap.Reconstruction(str(model))
        for text in model.glob("*.txt"):
            text.unlink()
        reconstruction.write_binary(str(model))
        assert (model / "images.bin").is_file()
    reference = load_llff_scene(tiny_scene, holdout_every=8, load_labels=False)
    assert_same_scene(load_colmap_scene(colmap_capture, near=llff_cameras(tiny_scene)[4]), reference)


def test_the_near_bound_comes_from_the_points(tiny_scene, tmp_path):
    root = as_capture(tiny_scene, tmp_path / "points")
    images, c2w, focal, size, near = llff_cameras(tiny_scene)
    # Points in front of the first camera, the nearest at exactly `near` along its axis.
    depths = np.linspace(near, 4 * near, 2000)
    points = c2w[0, :, 3] - depths[:, None] * c2w[0, :, 2]
    write_colmap_text(root, images, c2w, focal, size, points)
    from_points = load_colmap_scene(root)
    from_near = load_colmap_scene(root, near=float(np.percentile(
        [d for pose in c2w for d in -(pose[:, :3].T @ (points - pose[:, 3]).T)[2] if d > 0], 0.1)))
    assert torch.allclose(from_points.c2w, from_near.c2w)
    with pytest.raises(DataError, match="needs 3D points for its near bound"):
        (root / "sparse/0/points3D.txt").write_text("# 3D point list\n")
        load_colmap_scene(root)


def test_a_360_capture_is_centred_on_its_focus_and_scaled_into_the_unit_sphere(tmp_path):
    from laser.data.camera_paths import look_at

    target, up = np.array([2.0, -1.0, 0.5]), np.array([0.0, 1.0, 0.0])
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    c2w = np.stack([look_at(target + 3 * np.array([np.cos(a), 0.3, np.sin(a)]), target, up) for a in angles])
    assert not is_forward_facing(c2w) and np.allclose(focus_point(c2w), target, atol=1e-6)
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    paths = []
    for i in range(len(c2w)):
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(np.full((12, 16, 3), i * 10, np.uint8)).save(paths[-1])
    points = target + np.random.default_rng(0).normal(scale=0.3, size=(500, 3))
    scene = capture_scene(Capture(tmp_path / "t.json", paths, c2w, 16, 12, 14.0, 14.0, points), tmp_path)
    centres = scene.c2w[:, :, 3]
    assert not scene.ndc and centres.norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(scene.c2w[:, :, 1].mean(0) / scene.c2w[:, :, 1].mean(0).norm(), torch.tensor([0., 0., 1.]),
                          atol=1e-5)                                     # the cameras' up is +z
    low, high = scene.aabb
    assert (low > -1).all() and (high < 1).all() and (low < 0).all() and (high > 0).all()   # round the points
    rays = scene.rays(0)
    assert torch.allclose(rays[:, 3:].norm(dim=-1), torch.ones(len(rays)))   # world rays, unit directions
    assert scene.classes == [] and scene.test_views == [0, 8]


def test_bad_captures_are_refused_with_the_file_named(nerfstudio_capture, colmap_capture):
    meta = json.loads((nerfstudio_capture / "transforms.json").read_text())
    cases = [
        ({**meta, "k1": 0.1}, "lens distortion"),
        ({**meta, "camera_model": "EQUIRECTANGULAR"}, "camera_model EQUIRECTANGULAR"),
        ({**meta, "cx": meta["cx"] + 5}, "principal point"),
        ({**meta, "frames": [{**meta["frames"][0], "file_path": "images/missing.png"}, *meta["frames"][1:]]},
         "not found"),
        ({**meta, "frames": [{"file_path": meta["frames"][0]["file_path"]}]}, "has no transform_matrix"),
        ({**meta, "frames": [{**meta["frames"][0], "fl_x": 99.0}, *meta["frames"][1:]]}, "different intrinsics"),
        ({**meta, "frames": []}, "non-empty 'frames'"),
    ]
    for broken, message in cases:
        (nerfstudio_capture / "transforms.json").write_text(json.dumps(broken))
        with pytest.raises(DataError, match=message) as error:
            load_nerfstudio_scene(nerfstudio_capture, near=1.0)
        assert error.value.path.name in ("transforms.json", "missing.png")
    (nerfstudio_capture / "transforms.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_nerfstudio_scene(nerfstudio_capture)

    pytest.importorskip("pycolmap")
    cameras = colmap_capture / "sparse/0/cameras.txt"
    text = cameras.read_text()
    f, cx, cy = text.split()[-4], text.split()[-2], text.split()[-1]
    cameras.write_text(f"1 SIMPLE_RADIAL 64 48 {f} {cx} {cy} 0.05\n")
    with pytest.raises(DataError, match="SIMPLE_RADIAL with distortion"):
        load_colmap_scene(colmap_capture, near=1.0)
    cameras.write_text(text)
    (colmap_capture / "images" / "03.png").unlink()
    with pytest.raises(DataError, match="03.png: image named in"):
        load_colmap_scene(colmap_capture, near=1.0)
    shutil.rmtree(colmap_capture / "sparse")
    with pytest.raises(DataError, match="no COLMAP model here"):
        load_colmap_scene(colmap_capture)


def test_a_capture_trains_both_stages_and_is_evaluated_like_any_scene(tiny_scene, nerfstudio_capture, tmp_path):
    """scene=nerfstudio through train.py with the dense CLIP teacher (of the tiny CLIP), then eval.py; then the same
    capture with only classes.txt: trained, pictured, not scored."""
    import subprocess
    import sys

    from conftest import TINY_STAGE2, TINY_TRAINING

    repo = Path(__file__).resolve().parents[1]
    overrides = ["scene=nerfstudio", f"scene.near={llff_cameras(tiny_scene)[4]}", "scene.holdout_every=4",
                 "teacher_source=clip", "clip=tiny", "reconstruction=cpu",
                 *[o for o in TINY_TRAINING if not o.startswith("scene.")], *TINY_STAGE2["laser"]]

    def train(root, run):
        done = subprocess.run([sys.executable, "train.py", f"scene.root={root}", *overrides, f"hydra.run.dir={run}",
                               f"stage_store={tmp_path / 'stages'}"], cwd=repo, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    result = train(nerfstudio_capture, tmp_path / "run")
    assert 0 <= result["miou"] <= 1 and result["test_psnr"] > 5
    done = subprocess.run([sys.executable, "eval.py", f"run={tmp_path / 'run'}", f"out={tmp_path / 'eval'}"],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "eval/results.json").read_text())[0]["miou"] == pytest.approx(result["miou"])

    prompts_only = tmp_path / "prompts_only"
    shutil.copytree(nerfstudio_capture, prompts_only)
    shutil.move(prompts_only / "segmentations" / "classes.txt", prompts_only / "classes.txt")
    shutil.rmtree(prompts_only / "segmentations")
    result = train(prompts_only, tmp_path / "run2")
    assert "miou" not in result and "stage2_train_s" in result
    assert {p.name for p in (tmp_path / "run2/laser/test").glob("segmentation_*.png")} == {
        "segmentation_000.png", "segmentation_004.png"}                         # the test views
