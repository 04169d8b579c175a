import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from laser.data.blender import load_blender_scene
from laser.errors import DataError


def make_blender(root: Path, frames: int = 2, size: int = 8) -> Path:
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        entries = []
        for i in range(frames):
            rgba = np.zeros((size, size, 4), np.uint8)
            rgba[..., 0] = 255
            rgba[: size // 2, :, 3] = 255            # top half opaque red, bottom half transparent
            Image.fromarray(rgba).save(root / split / f"r_{i}.png")
            matrix = np.eye(4)
            matrix[2, 3] = 4.0 + i
            entries.append({"file_path": f"./{split}/r_{i}", "transform_matrix": matrix.tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": entries}))
    return root


def test_blender_scene_loads_and_composites_on_white(tmp_path):
    scene = load_blender_scene(make_blender(tmp_path / "lego"))
    assert scene.images.shape == (4, 8, 8, 3) and not scene.ndc and scene.white_background
    torch.testing.assert_close(scene.images[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(scene.images[0, -1, 0], torch.tensor([1.0, 1.0, 1.0]))
    assert scene.fx == pytest.approx(0.5 * 8 / np.tan(0.5 * 0.69))
    assert scene.train_views == [0, 1] and scene.test_views == [2, 3]
    rays = scene.rays(1)
    torch.testing.assert_close(rays[:, 3:].norm(dim=-1), torch.ones(64))
    torch.testing.assert_close(rays[0, :3], torch.tensor([0.0, 0.0, 5.0]))


def test_blender_bad_input(tmp_path):
    root = make_blender(tmp_path / "lego")
    (root / "test" / "r_1.png").unlink()
    with pytest.raises(DataError, match="r_1.png.*not found"):
        load_blender_scene(root)
    (root / "transforms_test.json").write_text("{not json")
    with pytest.raises(DataError, match="transforms_test.json: not valid JSON"):
        load_blender_scene(root)
    (root / "transforms_test.json").write_text(json.dumps({"camera_angle_x": 1.0, "frames": [{"file_path": "x"}]}))
    with pytest.raises(DataError, match="4x4"):
        load_blender_scene(root)
    (root / "transforms_train.json").unlink()
    with pytest.raises(DataError, match="transforms_train.json: transforms file not found"):
        load_blender_scene(root)
