"""A user's own capture (COLMAP, nerfstudio) as a :class:`~laser.data.scene.Scene`: the cameras a reader found,
normalised into the ray space the fields train in, with the 3D-OVS-style class prompts and masks when present.

The readers (:mod:`laser.data.colmap`, :mod:`laser.data.nerfstudio`) give a :class:`Capture`: image files, OpenGL
camera-to-world poses in the capture's own frame, one pinhole camera, optional 3D points. Then
:func:`capture_scene`:

* ``ray_space="ndc"`` (forward-facing, as LLFF / 3D-OVS): poses re-centred on their average (which looks down -z)
  and scaled so that the nearest surface, the 0.1st percentile of the points' depths in the cameras (LLFF's
  ``imgs2poses`` rule), sits at 1 / 0.75; rays in NDC, the forward-facing scenes' box.
* ``ray_space="world"`` (360°): poses rotated so that the cameras' mean up axis is +z, moved so that the point
  closest to every camera's optical axis is the origin (nerfstudio's "focus" centring), and scaled so that the
  farthest camera is at distance 1; rays in world space, unit directions; the box from the points (their 0.5th-99.5th
  percentiles, padded by 10 % of the largest extent, inside the cameras' unit sphere), else that sphere's cube.
* ``ray_space="auto"``: ``ndc`` when every camera looks within 60° of the cameras' mean viewing direction, else
  ``world``.

Class prompts: ``DIR/segmentations/classes.txt`` (with masks in ``DIR/segmentations/<view>/<prompt>.png``, the
3D-OVS layout, ``<view>`` the index in sorted image-name order, and optionally per-pixel labels in ``DIR/labels/``)
or ``DIR/classes.txt`` (prompts only, no evaluation masks).

Images with an alpha channel (RGBA, an object captured over a transparent background) are composited over white,
the background the reconstruction then renders, and their background pixels are no class: the 3D-OVS metrics leave
them out (:attr:`~laser.data.scene.Scene.score_unlabelled`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from laser.data.llff import over_background, read_image, read_segmentation
from laser.data.rays import recenter_poses
from laser.data.scene import Scene
from laser.errors import DataError

NDC_AABB = ((-1.5, -1.67, -1.0), (1.5, 1.67, 1.0))   # the forward-facing scenes' box (conf/scene/base/llff.yaml)


@dataclass
class Capture:
    """What a reader found, in the capture's own frame."""

    source: Path                  # the file the cameras came from (named in errors)
    image_paths: list[Path]       # sorted by name: the view indices
    c2w: np.ndarray               # [N, 3, 4] camera-to-world, OpenGL axes (right, up, back, centre)
    width: int                    # of the image files
    height: int
    fx: float
    fy: float
    points: np.ndarray | None = None   # [P, 3] sparse 3D points, for the near bound and the box


def check_principal_point(source: Path, cx: float, cy: float, width: int, height: int) -> None:
    """Rays assume the principal point at the image centre (COLMAP's default, which it does not refine unless
    asked); refuse one more than 1 % of the image away from it."""
    if abs(cx - width / 2) > 0.01 * width or abs(cy - height / 2) > 0.01 * height:
        raise DataError(source, f"principal point ({cx:.1f}, {cy:.1f}) is off the image centre "
                                f"({width / 2:.1f}, {height / 2:.1f}); laser assumes a centred one. Undistort and "
                                f"crop the images to a centred camera first (colmap image_undistorter)")


def is_forward_facing(c2w: np.ndarray) -> bool:
    """Every camera looks within 60° of the cameras' mean viewing direction."""
    forward = -c2w[:, :, 2]
    mean = forward.mean(0)
    mean = mean / max(np.linalg.norm(mean), 1e-12)
    return bool((forward @ mean > 0.5).all())


def point_depths(c2w: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``[N, P]`` depth of every point in every camera (positive in front)."""
    local = np.einsum("nji,npj->npi", c2w[:, :, :3], points[None] - c2w[:, None, :, 3])
    return -local[..., 2]


def focus_point(c2w: np.ndarray) -> np.ndarray:
    """The point nearest, in the least-squares sense, to every camera's optical axis."""
    directions = -c2w[:, :, 2]
    projections = np.eye(3)[None] - directions[:, :, None] * directions[:, None, :]      # [N, 3, 3]
    return np.linalg.lstsq(projections.sum(0), np.einsum("nij,nj->i", projections, c2w[:, :, 3]), rcond=None)[0]


def rotation_to_z(up: np.ndarray) -> np.ndarray:
    """A rotation taking unit ``up`` to +z (Rodrigues)."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(up, z)
    sine, cosine = np.linalg.norm(axis), float(up @ z)
    if sine < 1e-9:
        return np.eye(3) if cosine > 0 else np.diag([1.0, -1.0, -1.0])
    k = axis / sine
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + sine * cross + (1 - cosine) * cross @ cross


def normalise_ndc(capture: Capture, near: float | None) -> tuple[np.ndarray, tuple, tuple]:
    """Poses re-centred and scaled for NDC rays (see the module's docstring), the NDC range and box."""
    poses = np.concatenate([capture.c2w, np.broadcast_to([[[0.0, 0.0, 0.0, 1.0]]], (len(capture.c2w), 1, 4))], 1)
    if near is None:
        if capture.points is None or not len(capture.points):
            raise DataError(capture.source, "a forward-facing capture needs 3D points for its near bound (COLMAP's "
                                            "points3D, nerfstudio's ply_file_path); give scene.near=<distance> "
                                            "instead, or scene.ray_space=world")
        depths = point_depths(capture.c2w, capture.points)
        near = float(np.percentile(depths[depths > 0], 0.1)) if (depths > 0).any() else 0.0
        if near <= 0:
            raise DataError(capture.source, "no 3D point lies in front of the cameras: cannot place the near plane")
    c2w = recenter_poses(poses[:, :3])
    c2w[:, :, 3] /= 0.75 * near
    return c2w, (0.0, 1.0), NDC_AABB


def normalise_world(capture: Capture) -> tuple[np.ndarray, tuple, tuple]:
    """Poses oriented (+z up), centred on the cameras' focus and scaled into the unit sphere (see the module's
    docstring), the ray range and the box."""
    up = capture.c2w[:, :, 1].mean(0)
    rotation = rotation_to_z(up / max(np.linalg.norm(up), 1e-12))
    centre = focus_point(capture.c2w)
    c2w = np.concatenate([rotation @ capture.c2w[:, :, :3], (rotation @ (capture.c2w[:, :, 3] - centre).T).T[..., None]],
                         axis=2)
    scale = 1.0 / max(np.linalg.norm(c2w[:, :, 3], axis=1).max(), 1e-12)
    c2w[:, :, 3] *= scale
    low, high = -np.ones(3), np.ones(3)
    if capture.points is not None and len(capture.points) >= 10:
        points = (rotation @ (capture.points - centre).T).T * scale
        points = points[np.linalg.norm(points, axis=1) < 1.0]
        if len(points) >= 10:
            # Thin parts (a vase on a table) hold few points: the outer 0.5 % are left out as outliers, and every
            # axis gets a tenth of the largest extent, so a flat scene's box still holds what stands on it.
            lo, hi = np.percentile(points, 0.5, axis=0), np.percentile(points, 99.5, axis=0)
            pad = 0.1 * (hi - lo).max()
            low, high = np.maximum(lo - pad, -1.0), np.minimum(hi + pad, 1.0)
    return c2w, (0.05, 2.0 * math.sqrt(3.0)), (tuple(low.tolist()), tuple(high.tolist()))


def capture_scene(capture: Capture, root: Path, downsample: float = 1.0, ray_space: str = "auto",
                  near: float | None = None, holdout_every: int = 8, name: str | None = None) -> Scene:
    """A :class:`~laser.data.scene.Scene` of the capture at ``1/downsample`` of its files' resolution."""
    if ray_space not in ("auto", "ndc", "world"):
        raise DataError(capture.source, f"scene.ray_space must be auto, ndc or world, not {ray_space!r}")
    if ray_space == "auto":
        ray_space = "ndc" if is_forward_facing(capture.c2w) else "world"
    if ray_space == "ndc":
        c2w, near_far, aabb = normalise_ndc(capture, near)
    else:
        c2w, near_far, aabb = normalise_world(capture)
    source_size = (capture.width, capture.height)
    size = (int(capture.width / downsample), int(capture.height / downsample))
    images, transparent = [], []
    for path in capture.image_paths:
        image = read_image(path, size, source_size=source_size).astype(np.float32) / 255.0
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise DataError(path, f"expected an RGB or RGBA image, found shape {image.shape}")
        transparent.append(image.shape[2] == 4)
        images.append(torch.from_numpy(np.ascontiguousarray(over_background(image))))   # white, as nerfstudio
    if len(set(transparent)) > 1:
        raise DataError(capture.image_paths[transparent.index(not transparent[0])],
                        "some images have an alpha channel and others not: use one kind for the whole capture")
    classes, annotations, labels = read_segmentation(root, capture.image_paths, size, source_size)
    views = list(range(len(images)))
    test_views = views[::holdout_every] if holdout_every > 0 else [0]
    train_views = [v for v in views if v not in test_views] if holdout_every > 0 else views
    return Scene(name=name or root.name, images=torch.stack(images),
                 c2w=torch.from_numpy(np.ascontiguousarray(c2w)).float(),
                 fx=capture.fx * size[0] / capture.width, fy=capture.fy * size[1] / capture.height,
                 ndc=ray_space == "ndc", near_far=near_far, aabb=torch.tensor(aabb, dtype=torch.float32),
                 image_paths=[str(p) for p in capture.image_paths], train_views=train_views, test_views=test_views,
                 classes=classes, annotations=annotations, labels=labels, white_background=transparent[0],
                 score_unlabelled=not transparent[0])
