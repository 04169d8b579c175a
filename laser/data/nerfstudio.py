"""A nerfstudio capture (what ``ns-process-data`` writes) as a scene: ``scene=nerfstudio scene.root=DIR``.

```
DIR/transforms.json   {"fl_x", "fl_y", "cx", "cy", "w", "h", "camera_model", "k1"...,  (shared, or per frame)
                       "frames": [{"file_path": "images/frame_00001.png", "transform_matrix": 4x4}, ...],
                       "applied_transform": 3x4 (optional), "ply_file_path": "sparse_pc.ply" (optional)}
DIR/segmentations/ or DIR/classes.txt   optional class prompts and masks (laser.data.captures)
```
``transform_matrix`` is camera-to-world with OpenGL axes, as nerfstudio writes it; views are the frames in sorted
``file_path`` order. ``applied_transform`` is the transform ns-process-data already applied to COLMAP's poses and to
the point cloud (nerfstudio keeps it to map results back); laser checks its shape and takes the poses as written.
The point cloud of ``ply_file_path``, when present, gives the near bound and the box. Distortion (``k1 k2 k3 k4 p1
p2``) must be zero: undistorted images are expected (refused otherwise, with the file named).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from laser.data.blender import read_json
from laser.data.captures import Capture, capture_scene, check_principal_point
from laser.data.ply import read_points
from laser.data.scene import Scene
from laser.errors import DataError

INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")
MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")


def read_nerfstudio(root: str | Path, transforms: str = "transforms.json") -> Capture:
    """The cameras, images and (optional) points of ``root/transforms.json``."""
    root = Path(root)
    source = root / transforms
    meta = read_json(source, "transforms file not found (nerfstudio's ns-process-data writes transforms.json)")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DataError(source, "needs a non-empty 'frames' list")
    if "applied_transform" in meta and np.asarray(meta["applied_transform"]).shape not in ((3, 4), (4, 4)):
        raise DataError(source, "'applied_transform' must be a 3x4 or 4x4 matrix")
    cameras, paths, poses = set(), [], []
    for index, frame in sorted(enumerate(frames), key=lambda item: str(item[1].get("file_path", ""))):
        camera = {**meta, **frame}                                   # per-frame values override the shared ones
        missing = [k for k in ("file_path", "transform_matrix", *INTRINSICS) if k not in camera]
        if missing:
            raise DataError(source, f"frame {index} ({frame.get('file_path', '?')}) has no {', '.join(missing)}")
        model = camera.get("camera_model", "OPENCV")
        if model not in MODELS:
            raise DataError(source, f"frame {index}: camera_model {model} is not read by laser (known: "
                                    f"{', '.join(MODELS)}); undistort the images to a pinhole camera first")
        distortion = {k: camera[k] for k in DISTORTION if abs(float(camera.get(k, 0.0))) > 1e-12}
        if distortion:
            raise DataError(source, f"frame {index} ({frame['file_path']}) has lens distortion {distortion}: "
                                    f"undistort the images first (laser expects pinhole images)")
        matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
            raise DataError(source, f"frame {index}: transform_matrix must be a finite 4x4 matrix")
        path = (root / frame["file_path"]).resolve()
        if not path.is_file():
            raise DataError(path, f"image of frame {index} in {source.name} not found")
        cameras.add(tuple(float(camera[k]) for k in INTRINSICS))
        paths.append(path)
        poses.append(matrix[:3])
    if len(cameras) > 1:
        raise DataError(source, f"the frames use {len(cameras)} different intrinsics; laser needs one shared camera")
    fx, fy, cx, cy, width, height = cameras.pop()
    check_principal_point(source, cx, cy, int(width), int(height))
    points = read_points(root / meta["ply_file_path"]) if meta.get("ply_file_path") else None
    return Capture(source=source, image_paths=paths, c2w=np.stack(poses), width=int(width), height=int(height),
                   fx=fx, fy=fy, points=points)


def load_nerfstudio_scene(root: str | Path, downsample: float = 1.0, transforms: str = "transforms.json",
                          ray_space: str = "auto", near: float | None = None, holdout_every: int = 8,
                          name: str | None = None) -> Scene:
    """The nerfstudio capture at ``root`` as a scene (:func:`laser.data.captures.capture_scene`)."""
    root = Path(root)
    return capture_scene(read_nerfstudio(root, transforms), root, downsample, ray_space, near, holdout_every, name)
