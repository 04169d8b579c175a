import numpy as np
import pytest
import torch

from laser.data.rays import (average_pose, camera_rays, llff_to_opengl, ndc_rays, ndc_to_world,
                             pixel_directions, recenter_poses)


def test_pixel_directions_hand_computed():
    d = pixel_directions(2, 4, fx=2.0, fy=4.0)
    assert d.shape == (2, 4, 3)
    # pixel (column 0, row 0): centre (0.5, 0.5), principal point (2, 1)
    torch.testing.assert_close(d[0, 0], torch.tensor([(0.5 - 2) / 2, -(0.5 - 1) / 4, -1.0]))
    torch.testing.assert_close(d[1, 3], torch.tensor([(3.5 - 2) / 2, -(1.5 - 1) / 4, -1.0]))


def test_camera_rays_rotate_and_translate():
    c2w = torch.tensor([[0.0, 0, 1, 5], [0, 1, 0, 6], [-1, 0, 0, 7]])     # looks down world +x
    o, d = camera_rays(torch.tensor([[0.0, 0.0, -1.0]]), c2w, normalize=True)
    torch.testing.assert_close(o, torch.tensor([[5.0, 6.0, 7.0]]))
    torch.testing.assert_close(d, torch.tensor([[-1.0, 0.0, 0.0]]))    # -(third column of the rotation)


def test_ndc_central_ray():
    o, d = ndc_rays(torch.zeros(1, 3), torch.tensor([[0.0, 0.0, -1.0]]), height=10, width=10, focal=5.0)
    torch.testing.assert_close(o, torch.tensor([[0.0, 0.0, -1.0]]))
    torch.testing.assert_close(d, torch.tensor([[0.0, 0.0, 2.0]]))


def test_ndc_maps_world_points_onto_the_ndc_ray():
    """Every world point on a ray projects (by the NDC projection) onto o' + t d' with t in [0, 1)."""
    h, w, f, near = 30, 40, 35.0, 1.0
    torch.manual_seed(0)
    origins = torch.randn(16, 3) * 0.1
    dirs = torch.cat([torch.randn(16, 2) * 0.3, -torch.ones(16, 1)], dim=1)
    o_ndc, d_ndc = ndc_rays(origins, dirs, h, w, f, near)
    for depth in (1.5, 3.0, 20.0):
        t_world = (depth + origins[:, 2]) / -dirs[:, 2]
        p = origins + t_world[:, None] * dirs
        projected = torch.stack([-f / (w / 2) * p[:, 0] / p[:, 2], -f / (h / 2) * p[:, 1] / p[:, 2],
                                 1 + 2 * near / p[:, 2]], dim=1)
        t = (projected[:, 2] - o_ndc[:, 2]) / d_ndc[:, 2]
        assert ((t >= 0) & (t < 1)).all()
        torch.testing.assert_close(o_ndc + t[:, None] * d_ndc, projected, atol=1e-5, rtol=1e-5)


def test_ndc_to_world_inverts_the_ndc_ray_points():
    """Points along NDC rays map back onto the world rays they came from, at the right depth."""
    h, w, f = 30, 40, 35.0
    origins = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.2, 0.05]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.3, 0.1, -1.0]])
    o_ndc, d_ndc = ndc_rays(origins, dirs, h, w, f)
    # NDC t = 0.5 on the central ray: z_ndc = 0, so the world depth is 2 near / (0 - 1) = -2 (hand-computed).
    torch.testing.assert_close(ndc_to_world(o_ndc[:1] + 0.5 * d_ndc[:1], h, w, f), torch.tensor([[0.0, 0.0, -2.0]]))
    for t in (0.0, 0.3, 0.9):
        world = ndc_to_world(o_ndc + t * d_ndc, h, w, f)
        along = (world - origins) / dirs                        # the same ray parameter on every axis
        torch.testing.assert_close(along[1], along[1, 2].expand(3), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(world[:, 2], torch.full((2,), -1.0 / (1.0 - t)), atol=1e-4, rtol=1e-4)


def test_llff_axes_and_recentering():
    rng = np.random.default_rng(0)
    # LLFF columns (down, right, back): build them from random proper rotations.
    q, _ = np.linalg.qr(rng.normal(size=(5, 3, 3)))
    q *= np.sign(np.linalg.det(q))[:, None, None]
    right, up, back = q[:, :, 0], q[:, :, 1], q[:, :, 2]
    llff = np.stack([-up, right, back, rng.normal(size=(5, 3))], axis=2)
    gl = llff_to_opengl(llff)
    np.testing.assert_allclose(gl[:, :, 0], right)
    np.testing.assert_allclose(gl[:, :, 1], up)
    centred = recenter_poses(gl)
    avg = average_pose(centred)
    np.testing.assert_allclose(avg[:, 3], 0, atol=1e-9)
    np.testing.assert_allclose(avg[:, 2] / np.linalg.norm(avg[:, 2]), [0, 0, 1], atol=1e-9)
    assert np.allclose(np.linalg.det(centred[:, :, :3]), 1.0)


@pytest.mark.parametrize("normalize", [True, False])
def test_camera_rays_shapes(normalize):
    o, d = camera_rays(pixel_directions(3, 5, 4.0, 4.0), torch.eye(4)[:3], normalize=normalize)
    assert o.shape == d.shape == (3, 5, 3)
    if normalize:
        torch.testing.assert_close(d.norm(dim=-1), torch.ones(3, 5))
