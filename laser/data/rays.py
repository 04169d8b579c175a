"""Camera rays and the NDC warp for forward-facing scenes (pure functions).

Conventions (those of NeRF / TensoRF, LASER.md §1.5):
- camera-to-world matrices ``c2w`` are ``[..., 3, 4]`` with columns (right, up, back, centre): the camera looks
  down its -z axis (OpenGL);
- a pixel (i, j) (column, row) is sampled at its centre (i + 0.5, j + 0.5);
- LLFF's ``poses_bounds.npy`` stores (down, right, back) columns; :func:`llff_to_opengl` converts.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def pixel_directions(height: int, width: int, fx: float, fy: float, cx: float | None = None,
                     cy: float | None = None) -> Tensor:
    """Camera-space ray directions through pixel centres, not normalised: ``[H, W, 3]`` with z = -1."""
    cx = width / 2 if cx is None else cx
    cy = height / 2 if cy is None else cy
    j, i = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                          torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    return torch.stack([(i - cx) / fx, -(j - cy) / fy, -torch.ones_like(i)], dim=-1)


def camera_rays(directions: Tensor, c2w: Tensor, normalize: bool = False) -> tuple[Tensor, Tensor]:
    """World-space rays from camera-space directions ``[..., 3]`` and one ``c2w`` ``[3, 4]``.

    Returns origins and directions, both ``[..., 3]``.
    """
    rays_d = directions @ c2w[:3, :3].T
    if normalize:
        rays_d = rays_d / rays_d.norm(dim=-1, keepdim=True)
    return c2w[:3, 3].expand_as(rays_d), rays_d


def ndc_rays(rays_o: Tensor, rays_d: Tensor, height: int, width: int, focal: float,
             near: float = 1.0) -> tuple[Tensor, Tensor]:
    """Warp world rays ``[..., 3]`` into normalised device coordinates (Mildenhall et al., NeRF appendix C).

    Origins are first moved onto the plane z = -near; in NDC a ray then runs from z = -1 (t = 0) to z = +1 (t = 1,
    infinitely far), so a uniform t covers the unbounded forward-facing scene with inverse-depth spacing.
    """
    t = -(near + rays_o[..., 2]) / rays_d[..., 2]
    rays_o = rays_o + t[..., None] * rays_d
    ox, oy, oz = rays_o.unbind(-1)
    dx, dy, dz = rays_d.unbind(-1)
    sx, sy = -2.0 * focal / width, -2.0 * focal / height
    origins = torch.stack([sx * ox / oz, sy * oy / oz, 1.0 + 2.0 * near / oz], dim=-1)
    directions = torch.stack([sx * (dx / dz - ox / oz), sy * (dy / dz - oy / oz), -2.0 * near / oz], dim=-1)
    return origins, directions


def ndc_to_world(points: Tensor, height: int, width: int, focal: float, near: float = 1.0,
                 max_ndc_depth: float = 1.0 - 1e-6) -> Tensor:
    """Inverse of the NDC projection of :func:`ndc_rays`: NDC points ``[..., 3]`` -> world points ``[..., 3]``.

    ``z = 2 near / (z_ndc - 1)``, ``x = -x_ndc z W / (2 f)``, ``y = -y_ndc z H / (2 f)``. ``z_ndc = 1`` is
    infinitely far (and beyond it the warp wraps behind the camera), so NDC depths are clamped to
    ``max_ndc_depth``: such points come back very far away rather than infinite. Only the ratios ``f / W`` and
    ``f / H`` enter, so the mapping is the same at every downsampling of a scene.
    """
    x, y, z = points.unbind(-1)
    depth = 2.0 * near / (z.clamp(max=max_ndc_depth) - 1.0)
    return torch.stack([-x * depth * width / (2.0 * focal), -y * depth * height / (2.0 * focal), depth],
                       dim=-1)


def llff_to_opengl(poses: np.ndarray) -> np.ndarray:
    """LLFF ``[N, 3, >=4]`` (down, right, back, centre) columns to OpenGL (right, up, back, centre): ``[N, 3, 4]``."""
    return np.concatenate([poses[:, :, 1:2], -poses[:, :, 0:1], poses[:, :, 2:4]], axis=-1)


def average_pose(c2w: np.ndarray) -> np.ndarray:
    """The mean camera ``[3, 4]`` of ``[N, 3, 4]`` poses: mean centre, mean back axis, mean up axis re-orthogonalised."""
    center = c2w[:, :, 3].mean(0)
    z = c2w[:, :, 2].mean(0)
    z = z / np.linalg.norm(z)
    x = np.cross(c2w[:, :, 1].mean(0), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z, center], axis=1)


def recenter_poses(c2w: np.ndarray) -> np.ndarray:
    """Express ``[N, 3, 4]`` poses in the frame of their average pose, so the average camera sits at the origin
    looking down -z (what the NDC warp assumes)."""
    avg = np.eye(4)
    avg[:3] = average_pose(c2w)
    homo = np.concatenate([c2w, np.broadcast_to([[[0.0, 0.0, 0.0, 1.0]]], (len(c2w), 1, 4))], axis=1)
    return (np.linalg.inv(avg) @ homo)[:, :3]
