"""Laser's patch sampler: crops, block-mean rays and colours in the teacher's token order, reproducible draws."""
import io

import pytest
import torch

from laser.data.llff import load_llff_scene
from laser.data.patches import PatchSampler
from laser.data.scene import Scene

P, TOKEN = 32, 16


@pytest.fixture(scope="module")
def scene(tiny_scene) -> Scene:
    return load_llff_scene(tiny_scene)                  # 64x48, 8 views, labels


def test_shapes_and_grid(scene):
    sample = PatchSampler(scene, patch_size=P, patch_num=3).sample()
    batch = sample.batch
    assert sample.grid == (3, 2, 2)
    assert batch.images.shape == (3, P, P, 3) and batch.crop_size == P
    assert batch.views.shape == (3,) and batch.views.dtype == torch.long
    assert batch.top_left.shape == (3, 2) and batch.top_left.dtype == torch.long
    assert batch.labels.shape == (3, P, P) and batch.labels.dtype == torch.long
    assert sample.rays.shape == (12, 6) and sample.rgb.shape == (12, 3)


def test_token_rays_and_colours_are_block_means_in_teacher_order(scene):
    sample = PatchSampler(scene, patch_size=P, patch_num=4, seed=1).sample()
    b, g, _ = sample.grid
    rays = sample.rays.reshape(b, g, g, 6)             # the reshape a [B, g, g, D] teacher output undergoes
    rgb = sample.rgb.reshape(b, g, g, 3)
    for k, (view, (row, col)) in enumerate(zip(sample.batch.views.tolist(), sample.batch.top_left.tolist())):
        view_rays = scene.rays(view).reshape(scene.height, scene.width, 6)
        for i in range(g):
            for j in range(g):
                r, c = row + TOKEN * i, col + TOKEN * j
                torch.testing.assert_close(rays[k, i, j], view_rays[r : r + TOKEN, c : c + TOKEN].mean((0, 1)))
                torch.testing.assert_close(rgb[k, i, j], scene.images[view, r : r + TOKEN, c : c + TOKEN].mean((0, 1)))


def test_crops_stay_inside_and_reach_every_border(scene):
    sampler = PatchSampler(scene, patch_size=P, patch_num=8, seed=2)
    corners = torch.cat([sampler.sample().batch.top_left for _ in range(200)])
    max_row, max_col = scene.height - P, scene.width - P
    assert corners.min() == 0
    assert corners[:, 0].max() == max_row and corners[:, 1].max() == max_col
    # Not aligned to the token grid: every pixel position is a possible corner.
    assert len(corners[:, 0].unique()) == max_row + 1 and len(corners[:, 1].unique()) == max_col + 1


def test_images_and_labels_are_the_same_crop(scene):
    batch = PatchSampler(scene, patch_size=P, patch_num=8, seed=3).sample().batch
    for k, (view, (row, col)) in enumerate(zip(batch.views.tolist(), batch.top_left.tolist())):
        assert torch.equal(batch.images[k], scene.images[view, row : row + P, col : col + P])
        assert torch.equal(batch.labels[k], scene.labels[view, row : row + P, col : col + P])


def test_views_are_restricted_and_labels_optional(tiny_scene):
    scene = load_llff_scene(tiny_scene, load_labels=False)
    sampler = PatchSampler(scene, patch_size=P, patch_num=8, views=[2, 5])
    samples = [sampler.sample() for _ in range(10)]
    assert set(torch.cat([s.batch.views for s in samples]).tolist()) == {2, 5}
    assert all(s.batch.labels is None for s in samples)


def _same(a, b) -> bool:
    return (torch.equal(a.batch.views, b.batch.views) and torch.equal(a.batch.top_left, b.batch.top_left)
            and torch.equal(a.rays, b.rays) and torch.equal(a.rgb, b.rgb))


def test_same_seed_same_crops(scene):
    first, second = PatchSampler(scene, P, 8, seed=7), PatchSampler(scene, P, 8, seed=7)
    assert all(_same(first.sample(), second.sample()) for _ in range(5))
    assert not _same(PatchSampler(scene, P, 8, seed=8).sample(), PatchSampler(scene, P, 8, seed=7).sample())


def test_resume_from_state_dict_replays_the_crops(scene):
    sampler = PatchSampler(scene, P, 8, seed=4)
    for _ in range(3):
        sampler.sample()
    buffer = io.BytesIO()
    torch.save(sampler.state_dict(), buffer)             # as a checkpoint would hold it
    expected = [sampler.sample() for _ in range(3)]

    resumed = PatchSampler(scene, P, 8, seed=123)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    assert all(_same(resumed.sample(), e) for e in expected)


def test_crop_larger_than_image_is_rejected(scene):
    with pytest.raises(ValueError, match=r"crops of 64 px do not fit the 64x48 images.*patch downsampling"):
        PatchSampler(scene, patch_size=64, patch_num=1)


@pytest.mark.parametrize("size", [24, 8, 0])
def test_crop_not_a_multiple_of_the_token_is_rejected(scene, size):
    with pytest.raises(ValueError, match=rf"crop size {size} px is not a positive multiple .* token size 16"):
        PatchSampler(scene, patch_size=size, patch_num=1)


def test_bad_views_are_rejected(scene):
    with pytest.raises(ValueError, match="views"):
        PatchSampler(scene, P, 1, views=[8])


def test_views_walk_through_permutations_by_default(scene):
    views = sorted(scene.train_views)
    steps = 2 * len(views)                                             # 3 crops a step: 6 whole permutations
    sampler = PatchSampler(scene, P, 3, seed=5)
    order = torch.cat([sampler.sample().batch.views for _ in range(steps)]).tolist()
    assert all(sorted(order[i : i + len(views)]) == views for i in range(0, len(order), len(views)))
    with_replacement = PatchSampler(scene, P, 3, seed=5, view_order="replacement")
    drawn = torch.cat([with_replacement.sample().batch.views for _ in range(steps)]).tolist()
    assert any(sorted(drawn[i : i + len(views)]) != views for i in range(0, len(drawn), len(views)))


def test_an_unknown_view_order_is_a_config_error(scene):
    with pytest.raises(ValueError, match="model.supervision.view_order.*'shuffle'"):
        PatchSampler(scene, P, 1, view_order="shuffle")
