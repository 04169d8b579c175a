"""360-degree scenes in the Blender / NeRF-synthetic layout.

```
<root>/transforms_train.json, transforms_test.json (transforms_val.json optional)
    {"camera_angle_x": float, "frames": [{"file_path": "./train/r_0", "transform_matrix": 4x4}, ...]}
<root>/train/r_0.png ...          RGBA, composited over the background colour
```
Camera matrices are OpenGL camera-to-world already. Rays stay in world space (no NDC), directions unit length.
Class prompts, masks and labels as for any scene (:func:`laser.data.llff.read_segmentation`), the views numbered
in the order the splits list their frames; the background of RGBA images is no class.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from laser.data.llff import over_background, read_image, read_segmentation
from laser.data.scene import Scene
from laser.errors import DataError


def read_json(path: Path, missing: str = "transforms file not found") -> dict:
    """A camera file's JSON; a missing file is ``missing``, malformed JSON says where it breaks."""
    if not path.is_file():
        raise DataError(path, missing)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON ({err})") from err


def read_transforms(path: Path) -> dict:
    meta = read_json(path)
    if "camera_angle_x" not in meta or not meta.get("frames"):
        raise DataError(path, "needs 'camera_angle_x' and a non-empty 'frames' list")
    for i, frame in enumerate(meta["frames"]):
        matrix = np.asarray(frame.get("transform_matrix", []), dtype=np.float64)
        if "file_path" not in frame or matrix.shape != (4, 4):
            raise DataError(path, f"frame {i} needs 'file_path' and a 4x4 'transform_matrix'")
    return meta


def frame_image_path(root: Path, file_path: str) -> Path:
    path = (root / file_path).resolve()
    return path if path.suffix else path.with_suffix(".png")


def load_blender_scene(root: str | Path, downsample: float = 1.0, splits: tuple[str, ...] = ("train", "test"),
                       near_far: tuple[float, float] = (2.0, 6.0),
                       aabb: tuple[tuple[float, ...], tuple[float, ...]] = ((-1.5,) * 3, (1.5,) * 3),
                       background: tuple[float, float, float] = (1.0, 1.0, 1.0), name: str | None = None) -> Scene:
    """Load the given splits; views of the first split train, views of the last one test."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "scene folder not found")
    images, poses, paths, split_views = [], [], [], {}
    focal = None
    size = None
    transparent = False
    for split in splits:
        meta = read_transforms(root / f"transforms_{split}.json")
        split_views[split] = []
        for frame in meta["frames"]:
            path = frame_image_path(root, frame["file_path"])
            if not path.is_file():
                raise DataError(path, f"image of a frame in transforms_{split}.json not found")
            if size is None:
                with Image.open(path) as probe:
                    source = probe.size
                size = (int(source[0] / downsample), int(source[1] / downsample))
                focal = 0.5 * size[0] / np.tan(0.5 * float(meta["camera_angle_x"]))
            rgba = read_image(path, size, source_size=source).astype(np.float32) / 255.0
            if rgba.ndim != 3 or rgba.shape[2] not in (3, 4):
                raise DataError(path, f"expected an RGB or RGBA image, found shape {rgba.shape}")
            transparent |= rgba.shape[2] == 4
            split_views[split].append(len(images))
            images.append(torch.from_numpy(np.ascontiguousarray(over_background(rgba, background))))
            poses.append(np.asarray(frame["transform_matrix"], dtype=np.float64)[:3])
            paths.append(path)
    # Segmentation views index the images in the order the splits list them.
    classes, annotations, labels = read_segmentation(root, paths, size, source)
    return Scene(
        name=name or root.name, images=torch.stack(images), c2w=torch.from_numpy(np.stack(poses)).float(),
        fx=float(focal), fy=float(focal), ndc=False, near_far=tuple(near_far),
        aabb=torch.tensor(aabb, dtype=torch.float32), image_paths=[str(p) for p in paths],
        train_views=split_views[splits[0]], test_views=split_views[splits[-1]],
        white_background=tuple(background) == (1.0, 1.0, 1.0), classes=classes, annotations=annotations,
        labels=labels, score_unlabelled=not transparent,
    )
