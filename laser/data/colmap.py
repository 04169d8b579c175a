"""A COLMAP reconstruction as a scene: ``scene=colmap scene.root=DIR``.

```
DIR/sparse/0/cameras.{bin,txt}, images.{bin,txt}, points3D.{bin,txt}   the sparse model (binary or text)
DIR/images/<name>                 the photos the model's images name
DIR/segmentations/ or DIR/classes.txt   optional class prompts and masks (laser.data.captures)
```
Read with the maintained ``pycolmap``. Poses are COLMAP's ``cam_from_world`` (OpenCV axes) inverted and turned to
OpenGL axes; views are the model's images in sorted name order. Pinhole models are taken as they are; a model with
distortion parameters is taken only when they are all zero (undistort the images first, ``colmap
image_undistorter``, which writes a PINHOLE model). All images share one camera size and focal length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from laser.data.captures import Capture, capture_scene, check_principal_point
from laser.data.scene import Scene
from laser.errors import DataError

PINHOLE = {"SIMPLE_PINHOLE": ("f", "f", "cx", "cy"), "PINHOLE": ("fx", "fy", "cx", "cy")}
# Models whose first parameters are a pinhole's, followed by distortion terms.
DISTORTED = {"SIMPLE_RADIAL": 3, "RADIAL": 3, "OPENCV": 4, "FULL_OPENCV": 4, "OPENCV_FISHEYE": 4,
             "SIMPLE_RADIAL_FISHEYE": 3, "RADIAL_FISHEYE": 3}


def camera_intrinsics(source: Path, camera) -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy)`` of a pycolmap camera; refuses unknown models and non-zero distortion."""
    model, params = camera.model_name, list(camera.params)
    if model in PINHOLE:
        return (params[0], params[0], params[1], params[2]) if model == "SIMPLE_PINHOLE" else tuple(params[:4])
    if model in DISTORTED:
        pinhole = DISTORTED[model]
        if any(abs(p) > 1e-12 for p in params[pinhole:]):
            raise DataError(source, f"camera {camera.camera_id} is {model} with distortion {params[pinhole:]}: "
                                    f"undistort the images first (colmap image_undistorter writes a PINHOLE "
                                    f"model and undistorted images)")
        return (params[0], params[0], params[1], params[2]) if pinhole == 3 else tuple(params[:4])
    raise DataError(source, f"camera {camera.camera_id} has the camera model {model}, which laser does not read "
                            f"(known: {', '.join([*PINHOLE, *DISTORTED])})")


def read_colmap(root: str | Path, image_dir: str = "images", model_dir: str = "sparse/0") -> Capture:
    """The cameras, images and points of ``root``'s COLMAP model."""
    import pycolmap

    root = Path(root)
    model = root / model_dir
    if not all((model / f"{part}.bin").is_file() or (model / f"{part}.txt").is_file()
               for part in ("cameras", "images")):
        raise DataError(model, "no COLMAP model here (expected cameras.bin / images.bin, or the .txt files)")
    try:
        reconstruction = pycolmap.Reconstruction(str(model))
    except Exception as err:               # pycolmap raises its own runtime errors for malformed files
        raise DataError(model, f"cannot read the COLMAP model ({type(err).__name__}: {err})") from err
    images = sorted(reconstruction.images.values(), key=lambda image: image.name)
    if not images:
        raise DataError(model, "the COLMAP model has no images")
    sizes = {(reconstruction.cameras[i.camera_id].width, reconstruction.cameras[i.camera_id].height) for i in images}
    intrinsics = {camera_intrinsics(model, reconstruction.cameras[i.camera_id]) for i in images}
    if len(sizes) > 1 or len({(round(f[0], 3), round(f[1], 3)) for f in intrinsics}) > 1:
        raise DataError(model, f"the images use {len(intrinsics)} different cameras ({sorted(sizes)}); laser needs "
                               f"one shared camera (colmap feature_extractor --ImageReader.single_camera 1)")
    (width, height), (fx, fy, cx, cy) = sizes.pop(), intrinsics.pop()
    check_principal_point(model, cx, cy, width, height)
    paths, poses = [], []
    for image in images:
        path = root / image_dir / image.name
        if not path.is_file():
            raise DataError(path, f"image named in {model} not found")
        cam_from_world = image.cam_from_world()
        rotation = np.asarray(cam_from_world.rotation.matrix())
        translation = np.asarray(cam_from_world.translation)
        c2w = np.concatenate([rotation.T, (-rotation.T @ translation)[:, None]], axis=1)
        c2w[:, 1:3] *= -1                                               # OpenCV (right, down, forward) -> OpenGL
        paths.append(path)
        poses.append(c2w)
    points = np.array([p.xyz for p in reconstruction.points3D.values()]).reshape(-1, 3)
    return Capture(source=model, image_paths=paths, c2w=np.stack(poses), width=width, height=height, fx=fx, fy=fy,
                   points=points if len(points) else None)


def load_colmap_scene(root: str | Path, downsample: float = 1.0, image_dir: str = "images",
                      model_dir: str = "sparse/0", ray_space: str = "auto", near: float | None = None,
                      holdout_every: int = 8, name: str | None = None) -> Scene:
    """The COLMAP capture at ``root`` as a scene (:func:`laser.data.captures.capture_scene`)."""
    root = Path(root)
    return capture_scene(read_colmap(root, image_dir, model_dir), root, downsample, ray_space, near, holdout_every,
                         name)
