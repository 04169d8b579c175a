"""Camera paths for videos: LLFF's spiral and an orbit."""

import numpy as np
import torch

from laser.data.camera_paths import look_at, orbit_path, spiral_path
from laser.data.rays import average_pose


def cameras(n=10):
    generator = np.random.default_rng(0)
    poses = []
    for _ in range(n):
        centre = np.array([0.0, 0.0, 0.0]) + generator.normal(scale=[0.3, 0.2, 0.05])
        poses.append(look_at(centre, np.array([0.0, 0.0, -4.0]), np.array([0.0, 1.0, 0.0])))
    return torch.from_numpy(np.stack(poses)).float()


def test_look_at_is_a_rotation_looking_down_minus_z():
    pose = look_at(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 0.0]), np.array([0.0, 1.0, 0.0]))
    assert np.allclose(pose[:, :3], np.eye(3)) and np.allclose(pose[:, 3], [1, 2, 3])


def test_the_spiral_stays_round_the_average_camera_and_looks_at_the_focus():
    poses = cameras()
    path = spiral_path(poses, focus_depth=4.0, frames=30).double().numpy()
    average = average_pose(poses.double().numpy())
    offsets = (path[:, :, 3] - average[:, 3]) @ average[:, :3]
    radii = np.percentile(np.abs((poses.double().numpy()[:, :, 3] - average[:, 3]) @ average[:, :3]), 90, axis=0)
    assert path.shape == (30, 3, 4) and (np.abs(offsets) <= radii + 1e-6).all()
    focus = average[:, 3] - 4.0 * average[:, 2]
    for pose in path:
        towards = (focus - pose[:, 3]) / np.linalg.norm(focus - pose[:, 3])
        assert np.allclose(-pose[:, 2], towards, atol=1e-6)
        assert np.allclose(pose[:, :3].T @ pose[:, :3], np.eye(3), atol=1e-6)


def test_the_orbit_keeps_its_radius_and_height_and_looks_at_the_target():
    poses = cameras()
    target = torch.tensor([0.0, 0.0, -4.0])
    path = orbit_path(poses, target, frames=12).double().numpy()
    up = poses.double().numpy()[:, :, 1].mean(0)
    up /= np.linalg.norm(up)
    offsets = path[:, :, 3] - target.numpy()
    heights = offsets @ up
    radii = np.linalg.norm(offsets - heights[:, None] * up, axis=1)
    assert np.allclose(heights, heights[0]) and np.allclose(radii, radii[0])
    for pose, offset in zip(path, offsets):
        assert np.allclose(pose[:, 2], offset / np.linalg.norm(offset), atol=1e-6)
