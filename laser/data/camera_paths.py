"""Camera paths for videos: a spiral in front of a forward-facing capture (LLFF's ``render_path_spiral``) and an
orbit round a 360° one. Poses are ``[N, 3, 4]`` camera-to-world, OpenGL axes (as :class:`~laser.data.scene.Scene`)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from laser.data.rays import average_pose


def look_at(centre: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """The ``[3, 4]`` pose of a camera at ``centre`` looking at ``target`` (its -z axis), ``up`` roughly up."""
    back = centre - target
    back = back / np.linalg.norm(back)
    right = np.cross(up, back)
    right = right / np.linalg.norm(right)
    return np.stack([right, np.cross(back, right), back, centre], axis=1)


def spiral_path(c2w: Tensor, focus_depth: float, frames: int = 120, rotations: int = 2,
                z_rate: float = 0.5) -> Tensor:
    """LLFF's spiral: round the average camera, with radii of the 90th percentile of the cameras' offsets along
    each of its axes, always looking at the point ``focus_depth`` in front of it. -> ``[frames, 3, 4]``."""
    poses = c2w.double().numpy()
    average = average_pose(poses)
    offsets = (poses[:, :, 3] - average[:, 3]) @ average[:, :3]                     # in the average camera's axes
    radii = np.percentile(np.abs(offsets), 90, axis=0)
    path = []
    for theta in np.linspace(0.0, 2 * math.pi * rotations, frames, endpoint=False):
        local = np.array([math.cos(theta), -math.sin(theta), -math.sin(theta * z_rate)]) * radii
        centre = average[:, :3] @ local + average[:, 3]
        target = average[:, 3] - average[:, 2] * focus_depth
        path.append(look_at(centre, target, average[:, 1]))
    return torch.from_numpy(np.stack(path)).float()


def orbit_path(c2w: Tensor, target: Tensor, frames: int = 120) -> Tensor:
    """A circle round the average camera's up axis through ``target`` ``[3]``, at the cameras' mean distance
    from that axis and their mean height along it, looking at ``target``. -> ``[frames, 3, 4]``."""
    poses = c2w.double().numpy()
    target = target.double().numpy()
    up = poses[:, :, 1].mean(0)
    up = up / np.linalg.norm(up)
    offsets = poses[:, :, 3] - target
    height = float((offsets @ up).mean())
    flat = offsets - np.outer(offsets @ up, up)
    radius = float(np.linalg.norm(flat, axis=1).mean())
    first = flat[0] / max(np.linalg.norm(flat[0]), 1e-12)
    second = np.cross(up, first)
    path = []
    for theta in np.linspace(0.0, 2 * math.pi, frames, endpoint=False):
        centre = target + up * height + radius * (math.cos(theta) * first + math.sin(theta) * second)
        path.append(look_at(centre, target, up))
    return torch.from_numpy(np.stack(path)).float()
