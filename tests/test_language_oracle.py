"""The oracle teacher (a test harness): degradation shapes, exactness without degradation, consistent confusion,
with the ``label_blur`` noise model where a test checks exact values (the dense-CLIP-like model:
``test_language_clip_like.py``)."""

import pytest
import torch

from laser.data.scene import Scene
from laser.data.patches import PatchBatch
from laser.language.teachers.base import PixelPyramidTeacher, ScalePyramidTeacher, TokenTeacher
from laser.language.teachers.oracle import (OraclePixelPyramid, OracleScalePyramid, OracleTeacher, degrade,
                                           draw_confusion, most_similar_other)


def block_labels(views=3, height=128, width=160):
    """Four 64x80 rectangles, classes 0..3, the same in every view; a -1 strip at the bottom of view 0."""
    labels = torch.zeros(views, height, width, dtype=torch.long)
    labels[:, :64, 80:] = 1
    labels[:, 64:, :80] = 2
    labels[:, 64:, 80:] = 3
    labels[0, -8:] = -1
    return labels


def make_scene(labels):
    views, height, width = labels.shape
    return Scene(name="blocks", images=torch.rand(views, height, width, 3), c2w=torch.eye(4)[:3].expand(views, 3, 4),
                 fx=100.0, fy=100.0, ndc=True, near_far=(0.0, 1.0), aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]),
                 image_paths=[], train_views=list(range(views)), test_views=[0],
                 classes=["a", "b", "c", "d"], labels=labels)


def text(classes=4, dim=512):
    return torch.nn.functional.normalize(torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)), dim=-1)


def test_most_similar_other_excludes_itself():
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert most_similar_other(embeddings).tolist() == [1, 0, 1]
    assert most_similar_other(embeddings[:1]).tolist() == [0]


def test_degrade_shapes_and_patch_average():
    labels = block_labels()
    tokens = degrade(labels, text(), blur_sigma=0.0)
    assert tokens.shape == (3, 8, 10, 512)
    odd = degrade(labels[:, :100, :150], text(), blur_sigma=1.0, noise_std=0.5)
    assert odd.shape == (3, 7, 10, 512)
    # A token straddling the class 0 / class 1 border (columns 64..80, border at 80) is the mean of both.
    mixed = degrade(labels[:, :16, 72:88], text(), blur_sigma=0.0)
    torch.testing.assert_close(mixed[0, 0, 0], (text()[0] + text()[1]) / 2)


def test_no_confusion_no_noise_gives_labels_on_patch_interiors():
    labels = block_labels()
    teacher = OracleTeacher(noise_model="label_blur", object_share=0.0, view_share=0.0, noise_std=0.0, blur_sigma=1.0)
    teacher.prepare(make_scene(labels), text())
    for view in range(3):
        tokens = teacher.full_image(view)
        predicted = (torch.nn.functional.normalize(tokens, dim=-1) @ text().T).argmax(-1)
        pixels = predicted.repeat_interleave(16, 0).repeat_interleave(16, 1)
        # Patch interiors: every pixel of the 16x16 patch has the same label.
        patch_pure = labels[view].unfold(0, 16, 16).unfold(1, 16, 16).flatten(2)
        pure = (patch_pure == patch_pure[..., :1]).all(-1) & (patch_pure[..., 0] >= 0)
        pure_pixels = pure.repeat_interleave(16, 0).repeat_interleave(16, 1)
        assert torch.equal(pixels[pure_pixels], labels[view][pure_pixels])


def test_object_confusion_is_the_same_in_every_view():
    labels = block_labels(views=5)
    embeddings = text()
    confused = draw_confusion(labels, embeddings, object_share=0.5, object_view_prob=1.0, view_share=0.0,
                              region_size=64, generator=torch.Generator().manual_seed(1))
    changed = [set(labels[v][confused[v] != labels[v]].unique().tolist()) for v in range(5)]
    assert len(changed[0]) == 2 and all(c == changed[0] for c in changed)
    target = most_similar_other(embeddings)
    for c in changed[0]:
        assert (confused[labels == c] == target[c]).all()
    assert (confused[labels == -1] == -1).all()


def test_view_confusion_is_independent_per_view_and_seeded():
    labels = block_labels(views=6)
    args = dict(object_share=0.0, object_view_prob=1.0, view_share=0.5, region_size=32)
    first = draw_confusion(labels, text(), generator=torch.Generator().manual_seed(2), **args)
    again = draw_confusion(labels, text(), generator=torch.Generator().manual_seed(2), **args)
    assert torch.equal(first, again)
    masks = (first != labels)
    assert 0.3 < masks[1:].float().mean() < 0.7
    assert not all(torch.equal(masks[1], masks[v]) for v in range(2, 6))


def test_teacher_crops_match_the_full_image_tokens():
    labels = block_labels()
    teacher = OracleTeacher(noise_model="label_blur", object_share=0.25, view_share=0.2, noise_std=0.0, blur_sigma=0.0)
    teacher.prepare(make_scene(labels), text())
    batch = PatchBatch(images=torch.rand(2, 64, 64, 3), views=torch.tensor([1, 2]),
                       top_left=torch.tensor([[32, 48], [64, 96]]))
    crops = teacher(batch)
    assert crops.shape == (2, 4, 4, 512)
    torch.testing.assert_close(crops[0], teacher.full_image(1)[2:6, 3:7])
    torch.testing.assert_close(crops[1], teacher.full_image(2)[4:8, 6:10])


def test_noise_has_the_configured_norm():
    teacher = OracleTeacher(noise_model="label_blur", object_share=0.0, view_share=0.0, noise_std=2.0, blur_sigma=0.0)
    teacher.prepare(make_scene(block_labels()), text())
    tokens = teacher.full_image(1)
    noise = tokens - degrade(teacher.class_maps[1:2], text(), blur_sigma=0.0)[0]
    assert abs(noise.norm(dim=-1).mean().item() - 2.0) < 0.1


def test_pyramid_crop_embedding_is_the_class_share_mix():
    scene, t = make_scene(block_labels(views=2)), text(dim=32)
    teacher = OraclePixelPyramid(noise_model="label_blur", object_share=0.0, view_share=0.0, noise_std=0.0)
    teacher.prepare(scene, t)
    # Rows 56..79 x cols 72..87: 8 rows above the class 0/1 | 2/3 border at 64, 16 below; 8 columns each side of 80.
    # The bottom 8 rows of view 0 are unlabelled: they dilute the crop (a zero embedding), 128 of its 256 pixels.
    expected = torch.stack([(t[0] + t[1]) / 6 + (t[2] + t[3]) / 3, t[2] / 2])
    embed = teacher.crop_embedder(scene, 0)
    torch.testing.assert_close(embed([(56, 72, 80, 88), (112, 0, 128, 16)]), expected)
    # With a downsampled pyramid a box is in pyramid pixels: (28, 36, 40, 44) is the first box above at x2.
    half = OraclePixelPyramid(noise_model="label_blur", object_share=0.0, view_share=0.0, noise_std=0.0,
                              image_downsample=2)
    half.prepare(scene, t)
    torch.testing.assert_close(half.crop_embedder(scene, 0)([(28, 36, 40, 44)]), expected[:1])
    assert half.maps(0).shape == (3, 32, 64, 80)
    # Every crop covering the top-left pixel lies inside class 0 at every scale.
    torch.testing.assert_close(teacher.maps(1)[:, :, 0, 0], t[0].expand(3, 32))
    batch = PatchBatch(images=torch.rand(1, 32, 32, 3), views=torch.tensor([1]), top_left=torch.tensor([[0, 0]]))
    assert teacher(batch).shape == (1, 2, 2, 32)


def test_pyramid_crops_use_the_confused_maps_and_are_noisy():
    scene, t = make_scene(block_labels(views=2)), text(dim=32)
    confused = OraclePixelPyramid(noise_model="label_blur", object_share=1.0, object_view_prob=1.0, noise_std=0.0)
    confused.prepare(scene, t)
    torch.testing.assert_close(confused.maps(1)[:, :, 0, 0], t[most_similar_other(t)[0]].expand(3, 32))
    noisy = OraclePixelPyramid(noise_model="label_blur", object_share=0.0, view_share=0.0, noise_std=2.0)
    noisy.prepare(scene, t)
    noise = noisy.crop_embedder(scene, 1)([(0, 0, 32, 32)] * 200) - t[0]
    assert abs(noise.norm(dim=-1).mean().item() - 2.0) < 0.1
    assert not torch.allclose(noise[0], noise[1])                       # fresh noise per crop


def test_lerf_query_on_the_oracle_interpolates_class_mixes():
    teacher = OracleScalePyramid(noise_model="label_blur", object_share=0.0, view_share=0.0, noise_std=0.0,
                                 num_layers=2, scale_min=0.125, scale_max=0.25, overlap=0.5)
    t = text(dim=32)
    teacher.prepare(make_scene(block_labels(views=2)), t)
    # Pixel (4, 76), scale midway. Layer 0 (16-px crops every 8 px): columns 72 (pure class 0) and 80 (half 0,
    # half 1) at weight 1/2 -> 3/4 t0 + 1/4 t1. Layer 1 (32-px crops every 16 px): columns 64 (pure 0) and 80
    # (half/half) at weight 3/4 -> 5/8 t0 + 3/8 t1. Rows stay in classes 0/1. Midway: 11/16 t0 + 5/16 t1.
    value = teacher.query(1, torch.tensor([[4.0, 76.0]]), torch.tensor([0.1875]))
    torch.testing.assert_close(value, (11 * t[0] + 5 * t[1])[None] / 16)


def test_each_oracle_offers_one_interface_and_validates_its_geometry():
    teacher = OracleTeacher()
    teacher.prepare(make_scene(block_labels(views=2)), text(dim=32))
    assert isinstance(teacher, TokenTeacher) and not hasattr(teacher, "pyramids")   # token grids build no pyramid
    assert isinstance(OraclePixelPyramid(), PixelPyramidTeacher) and not isinstance(OraclePixelPyramid(), TokenTeacher)
    assert isinstance(OracleScalePyramid(), ScalePyramidTeacher)
    with pytest.raises(TypeError):
        OracleTeacher(divisors=(5, 7, 10))                            # no geometry: a token grid has no pyramid
    with pytest.raises(ValueError, match="positive integer"):
        OraclePixelPyramid(image_downsample=1.5)
    with pytest.raises(ValueError, match="scale_min <= scale_max"):
        OracleScalePyramid(scale_min=0.6, scale_max=0.5)


def test_token_norm_scales_tokens_and_crops_noise_included():
    scene, t = make_scene(block_labels(views=2)), text(dim=32)
    for kind, read in ((OracleTeacher, lambda teacher: teacher.full_image(1)),
                       (OraclePixelPyramid, lambda teacher: teacher.crop_embedder(scene, 1)([(0, 0, 32, 32)] * 50))):
        unit, scaled = (kind(noise_model="label_blur", noise_std=1.0, token_norm=norm, seed=3) for norm in (1.0, 10.0))
        unit.prepare(scene, t)
        scaled.prepare(scene, t)
        torch.testing.assert_close(read(scaled), 10.0 * read(unit))


def test_pixel_scores_are_the_tokens_cosines_upsampled_to_the_view():
    labels = block_labels()[:, :100, :150]                              # not a multiple of the 16-px token
    teacher = OracleTeacher(noise_model="label_blur", object_share=0.0, view_share=0.0, noise_std=0.0, blur_sigma=0.0)
    teacher.prepare(make_scene(labels), text())
    tokens = torch.nn.functional.normalize(teacher.full_image(1), dim=-1) @ text().T
    nearest = teacher.pixel_scores(1, mode="nearest")
    assert nearest.shape == (100, 150, text().shape[0])
    torch.testing.assert_close(nearest, tokens.repeat_interleave(16, 0).repeat_interleave(16, 1)[:100, :150])
    assert teacher.pixel_scores(1).shape == (100, 150, text().shape[0])
