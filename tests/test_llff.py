import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FERN
from laser.data.llff import load_llff_scene
from laser.errors import DataError


def copy_scene(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_synthetic_scene_loads_with_sorted_classes(tiny_scene):
    scene = load_llff_scene(tiny_scene)
    written = (tiny_scene / "segmentations" / "classes.txt").read_text().split("\n")
    written = [c for c in written if c]
    assert scene.classes == sorted(written) and scene.classes != written
    assert scene.images.shape == (8, 48, 64, 3) and scene.images.dtype == torch.float32
    assert scene.ndc and scene.c2w.shape == (8, 3, 4)
    assert len(scene.annotations) == 2
    for view, masks in scene.annotations.items():
        assert masks.shape == (48, 64, len(scene.classes))
        # labels/ index classes.txt as written; the loader remaps them to the sorted order
        one_hot = torch.nn.functional.one_hot(scene.labels[view].clamp(min=0), len(scene.classes)).bool()
        assert torch.equal(masks, one_hot & (scene.labels[view] >= 0)[..., None])
    assert scene.train_views == list(range(8)) and scene.test_views == [0]


def test_rays_are_in_ndc(tiny_scene):
    scene = load_llff_scene(tiny_scene)
    rays = scene.rays(3)
    assert rays.shape == (48 * 64, 6)
    torch.testing.assert_close(rays[:, 2], torch.full((48 * 64,), -1.0))   # origins on the near plane
    far_points = rays[:, :3] + rays[:, 3:]
    torch.testing.assert_close(far_points[:, 2], torch.ones(48 * 64))


def test_downsample_and_holdout(tiny_scene):
    scene = load_llff_scene(tiny_scene, downsample=2, holdout_every=4)
    assert scene.images.shape[1:3] == (24, 32)
    full = load_llff_scene(tiny_scene)
    assert scene.fx == pytest.approx(full.fx / 2)
    assert scene.test_views == [0, 4] and scene.train_views == [1, 2, 3, 5, 6, 7]
    assert next(iter(scene.annotations.values())).shape[:2] == (24, 32)


def test_test_view_folder_names_are_accepted(tiny_scene, tmp_path):
    root = copy_scene(tiny_scene, tmp_path / "s")
    folder = sorted(p for p in (root / "segmentations").iterdir() if p.is_dir())[0]
    view = int(folder.name)
    folder.rename(folder.parent / f"test_view{view}")
    assert view in load_llff_scene(root).annotations


def test_masks_are_positive_only_at_255(tiny_scene, tmp_path):
    root = copy_scene(tiny_scene, tmp_path / "s")
    folder = sorted(p for p in (root / "segmentations").iterdir() if p.is_dir())[0]
    mask_path = next(folder.glob("*.png"))
    Image.fromarray(np.full((48, 64), 254, np.uint8)).save(mask_path)
    scene = load_llff_scene(root)
    k = scene.classes.index(mask_path.stem)
    assert not scene.annotations[int(folder.name)][..., k].any()


@pytest.mark.skipif(not FERN.is_dir(), reason="shared/data/llff_fern not available")
def test_fern_loads():
    scene = load_llff_scene(FERN, image_dir="images_8", holdout_every=8)
    assert scene.images.shape == (20, 378, 504, 3)
    assert scene.fx == pytest.approx(scene.fy, rel=1e-3)
    assert scene.test_views == [0, 8, 16] and len(scene.train_views) == 17
    assert scene.classes == [] and scene.labels is None
    # After re-centring the mean camera looks down -z from near the origin.
    assert scene.c2w[:, :, 3].mean(0).abs().max() < 1e-4
    assert scene.c2w[:, 2, 2].mean() > 0.9


# --- bad input: one clear error naming the file and the problem -------------------------------------------------

def expect_error(root: Path, path_suffix: str, words: str, **kwargs):
    with pytest.raises(DataError) as info:
        load_llff_scene(root, **kwargs)
    assert str(info.value.path).endswith(path_suffix), info.value
    assert words in info.value.problem, info.value


def test_missing_scene_folder(tmp_path):
    expect_error(tmp_path / "nope", "nope", "not found")


def test_missing_images_and_poses(tiny_scene, tmp_path):
    root = copy_scene(tiny_scene, tmp_path / "s")
    expect_error(root, "s/photos", "not found", image_dir="photos")
    (root / "poses_bounds.npy").unlink()
    expect_error(root, "poses_bounds.npy", "not found")


def test_pose_count_and_shape(tiny_scene, tmp_path):
    root = copy_scene(tiny_scene, tmp_path / "s")
    poses = np.load(root / "poses_bounds.npy")
    np.save(root / "poses_bounds.npy", poses[:5])
    expect_error(root, "poses_bounds.npy", "5 poses for 8 images")
    np.save(root / "poses_bounds.npy", poses[:, :15])
    expect_error(root, "poses_bounds.npy", "expected shape (N, 17)")
    (root / "poses_bounds.npy").write_text("not numpy")
    expect_error(root, "poses_bounds.npy", "cannot read")
    bad = poses.copy()
    bad[2, 15:] = [5.0, 1.0]
    np.save(root / "poses_bounds.npy", bad)
    expect_error(root, "poses_bounds.npy", "near < far")


def test_unreadable_image(tiny_scene, tmp_path):
    root = copy_scene(tiny_scene, tmp_path / "s")
    (root / "images" / "03.png").write_bytes(b"garbage")
    expect_error(root, "images/03.png", "cannot read image")


def test_empty_classes_and_unknown_mask(tiny_scene, tmp_path):
    root = copy_scene(tiny_scene, tmp_path / "s")
    folder = sorted(p for p in (root / "segmentations").iterdir() if p.is_dir())[0]
    shutil.copy(next(folder.glob("*.png")), folder / "purple dragon.png")
    expect_error(root, "purple dragon.png", "not a class of classes.txt")
    (folder / "purple dragon.png").unlink()
    (root / "segmentations" / "classes.txt").write_text("\n\n")
    expect_error(root, "classes.txt", "empty")


def test_mask_of_the_wrong_size(tiny_scene, tmp_path):
    root = copy_scene(tiny_scene, tmp_path / "s")
    folder = sorted(p for p in (root / "segmentations").iterdir() if p.is_dir())[0]
    mask = next(folder.glob("*.png"))
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(mask)
    expect_error(root, mask.name, "mask is 50x50 but the images are 64x48")


def test_bad_view_folder(tiny_scene, tmp_path):
    root = copy_scene(tiny_scene, tmp_path / "s")
    (root / "segmentations" / "front").mkdir()
    expect_error(root, "front", "named by the view index")
    (root / "segmentations" / "front").rename(root / "segmentations" / "99")
    expect_error(root, "99", "view index 99 but the scene has 8 images")


def test_label_map_out_of_range(tiny_scene, tmp_path):
    root = copy_scene(tiny_scene, tmp_path / "s")
    Image.fromarray(np.full((48, 64), 42, np.uint8)).save(root / "labels" / "02.png")
    expect_error(root, "labels/02.png", "label 42")
