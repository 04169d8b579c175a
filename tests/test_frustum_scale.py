"""LERF's scale along a ray: s = s_img * H * t / f_y, with t measured in the world frame (NDC undone)."""

import math

import torch

from laser.data.scene import Scene
from laser.modules.frustum_scale import frustum_scale, sample_scales


def scene(ndc: bool) -> Scene:
    return Scene(name="cameras", images=torch.zeros(1, 48, 64, 3), c2w=torch.eye(3, 4)[None], fx=60.0, fy=60.0,
                 ndc=ndc, near_far=(0.0, 1.0), aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), image_paths=[],
                 train_views=[0], test_views=[])


def test_frustum_scale_grows_with_distance():
    # A crop of a tenth of a 48-px-high image (4.8 px) at 2 units through a 50-px focal: 4.8 * 2 / 50 = 0.192.
    torch.testing.assert_close(frustum_scale(torch.tensor([0.1]), torch.tensor([2.0]), 48, 50.0),
                               torch.tensor([0.192]))
    scales = frustum_scale(torch.full((3,), 0.1), torch.tensor([1.0, 2.0, 4.0]), 48, 50.0)
    torch.testing.assert_close(scales / scales[0], torch.tensor([1.0, 2.0, 4.0]))


def test_sample_scales_in_world_space():
    # Camera at (1, 0, 0); a sample 3 units in front of it: 0.2 * 48 * 3 / 60 = 0.48.
    points, centres = torch.tensor([[1.0, 0.0, -3.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    torch.testing.assert_close(sample_scales(scene(False), points, centres, torch.tensor([0.2])),
                               torch.tensor([0.48]))


def test_sample_scales_undo_ndc():
    # NDC z = 0 is world depth 2 near / (0 - 1) = -2 (near = 1). On the central ray: distance 2, scale
    # 0.25 * 48 * 2 / 60 = 0.4. At NDC x = 0.5: world x = -0.5 * (-2) * 64 / (2 * 60) = 8 / 15, distance
    # sqrt(4 + 64 / 225).
    points = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
    scales = sample_scales(scene(True), points, torch.zeros(2, 3), torch.full((2,), 0.25))
    torch.testing.assert_close(scales, torch.tensor([0.4, 0.25 * 48 * math.sqrt(4 + 64 / 225) / 60]))
