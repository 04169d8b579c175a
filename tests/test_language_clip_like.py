"""The oracle's dense-CLIP-like feature model: each property it promises, measured on a four-block scene."""

import pytest
import torch
import torch.nn.functional as F

from laser.data.patches import PatchBatch
from laser.errors import ConfigError
from laser.language.teachers.clip_like import ClipLikeFeatures, blotch_fields, orthogonal_to
from laser.language.teachers.oracle import OraclePixelPyramid, OracleTeacher, degrade
from test_language_oracle import block_labels, make_scene

QUIET = dict(object_share=0.0, view_share=0.0, blur_sigma=0.0, token_norm=1.0)   # no confusion, blur or scale
OFF = dict(global_jitter=0.0, context_weight=0.0, blotch_std=0.0, artifact_share=0.0, token_noise=0.0)


def clip_text(classes=4, dim=512):
    """Unit class embeddings as alike as CLIP's prompts (pairwise cosine about 0.6)."""
    g = torch.Generator().manual_seed(0)
    common = torch.randn(dim, generator=g)
    return F.normalize(common + 0.8 * torch.randn(classes, dim, generator=g), dim=-1)


def teacher(**settings):
    oracle = OracleTeacher(**(QUIET | settings))
    oracle.prepare(make_scene(block_labels(views=4)), clip_text())
    return oracle


def crop(oracle, view=1, row=32, col=48, size=64):
    batch = PatchBatch(images=torch.zeros(1, size, size, 3), views=torch.tensor([view]),
                       top_left=torch.tensor([[row, col]]))
    return oracle(batch)[0]                                                     # [g, g, D]


def truth(view=1, row=32, col=48, size=64):
    """True class of each 16-px token of the crop (the blocks' borders fall on token borders)."""
    return block_labels(views=4)[view, row : row + size : 16, col : col + size : 16]


def test_tokens_are_far_from_the_text_and_alike_across_objects():
    oracle, text = teacher(), clip_text()
    tokens = torch.cat([crop(oracle, v, r, c).flatten(0, 1) for v in range(1, 4) for r, c in ((32, 48), (0, 0))])
    classes = torch.cat([truth(v, r, c).flatten() for v in range(1, 4) for r, c in ((32, 48), (0, 0))])
    cosines = F.normalize(tokens, dim=-1) @ text.T
    matched = cosines.gather(1, classes[:, None])[:, 0]
    wrong = cosines.scatter(1, classes[:, None], -2.0).amax(dim=1)
    assert 0.18 < matched.median() < 0.4                                        # CLIP: about 0.3
    assert 0.01 < (matched - wrong).median() < 0.12                              # a few hundredths
    # Tokens of different objects in one crop (the crop at (32, 48) holds all four blocks) are nearly parallel.
    grid, labels = F.normalize(crop(oracle), dim=-1).flatten(0, 1), truth().flatten()
    different = labels[:, None] != labels[None, :]
    assert (grid @ grid.T)[different].median() > 0.9


def test_the_global_component_is_orthogonal_to_the_text_and_shared_by_the_crop():
    oracle, text = teacher(**OFF), clip_text()
    tokens, labels = crop(oracle).flatten(0, 1), truth().flatten()
    common = tokens - text[labels]                                              # what is not the class signal
    torch.testing.assert_close(common, common[:1].expand_as(common), atol=1e-5, rtol=0)
    assert common[0].norm() == pytest.approx(4.0, rel=1e-4)                     # global_norm
    assert (common[0] @ text.T).abs().max() < 1e-4


def test_the_same_pixel_differs_between_crops_and_averaging_removes_the_crop_part():
    oracle = teacher(blotch_std=0.0, artifact_share=0.0, token_noise=0.0)
    # Pixel block (64..80, 80..96) is token (2, 2) of a crop at (32, 48) and token (0, 0) of one at (64, 80).
    first, second = crop(oracle, 1, 32, 48)[2, 2], crop(oracle, 1, 64, 80)[0, 0]
    assert F.cosine_similarity(first, second, dim=0) < 0.97                      # context and jitter
    fixed = teacher(**OFF)
    torch.testing.assert_close(crop(fixed, 1, 32, 48)[2, 2], crop(fixed, 1, 64, 80)[0, 0])
    # Over many crops the per-crop random direction averages away: the mean is closer to the jitter-free token.
    draws = torch.stack([crop(oracle, 1, 32, 48)[2, 2] for _ in range(64)])
    reference = crop(teacher(**(OFF | {"context_weight": 0.3})), 1, 32, 48)[2, 2]
    single = F.cosine_similarity(draws, reference[None], dim=-1).mean()
    averaged = F.cosine_similarity(draws.mean(0), reference, dim=0)
    assert averaged > single + 0.05 and averaged > 0.97


def test_blotches_are_smooth_fixed_per_view_and_independent_between_views():
    fields = blotch_fields(2, 3, 240, 320, scale=24.0, generator=torch.Generator().manual_seed(0))
    assert fields.flatten(2).std(dim=2).sub(1).abs().max() < 1e-4               # unit standard deviation
    lag = 2                                                                     # cells of 8 px: 16 px apart
    near = torch.corrcoef(torch.stack([fields[..., :-lag].flatten(), fields[..., lag:].flatten()]))[0, 1]
    assert near > 0.5                                                           # a blotch spans several tokens
    oracle = teacher(**(OFF | {"blotch_std": 0.5}))
    torch.testing.assert_close(crop(oracle, 2), crop(oracle, 2))                # the same in every crop of a view
    assert not torch.allclose(crop(oracle, 2), crop(oracle, 3))                 # labels equal, blotches not


def test_blotch_errors_are_spatially_coherent():
    oracle, text = teacher(blotch_std=0.6, artifact_share=0.0, token_noise=0.0), clip_text()
    labels = block_labels(views=4)[:, :128:16, ::16]                             # [V, 8, 10] token classes
    errors = torch.stack([(F.normalize(oracle.full_image(v), dim=-1) @ text.T).argmax(-1) != labels[v]
                          for v in range(1, 4)]).float()
    assert 0.05 < errors.mean() < 0.6
    neighbours = torch.corrcoef(torch.stack([errors[..., :-1].flatten(), errors[..., 1:].flatten()]))[0, 1]
    assert neighbours > 0.3                                                     # independent errors: about 0


def test_artifact_tokens_are_rare_high_norm_global_and_in_one_class_regions():
    oracle = teacher(**(OFF | {"artifact_share": 0.05, "token_noise": 0.1}))
    tokens = torch.stack([oracle.full_image(v) for v in range(1, 4) for _ in range(20)])    # [60, 8, 10, D]
    norms = tokens.norm(dim=-1)
    high = norms > 3 * norms.flatten(1).median(dim=1).values[:, None, None]
    assert 0.03 < high.float().mean() < 0.07
    others = (norms * ~high).sum(dim=(1, 2)) / (~high).sum(dim=(1, 2))                        # [60]
    ratio = norms / others[:, None, None]
    assert ratio[high].min() > 9 and ratio[high].max() < 10.5    # artifact_norm: 10 x the crop's mean (theirs in it)
    # Only where the 3 x 3 neighbourhood is one block: never on the block borders (token rows 3-4, columns 4-5).
    border = torch.zeros(8, 10, dtype=torch.bool)
    border[3:5], border[:, 4:6] = True, True
    assert not (high & border).any()
    text = clip_text()
    assert (F.normalize(tokens[high], dim=-1) @ text.T).abs().max() < 0.1        # the global component: no class


def test_independent_noise_has_the_configured_norm():
    oracle = teacher(**(OFF | {"token_noise": 0.3}))
    draws = torch.stack([crop(oracle) for _ in range(50)])
    noise = draws - draws.mean(0)
    assert noise.norm(dim=-1).mean() == pytest.approx(0.3, rel=0.05)


def test_orthogonal_directions_are_unit_and_orthogonal_to_the_text():
    text = clip_text()
    vectors = orthogonal_to(text, 5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(5))
    assert (vectors @ text.T).abs().max() < 1e-5


def test_pyramid_crops_have_the_global_component_and_clip_cosines():
    scene, text = make_scene(block_labels(views=2)), clip_text()
    pyramid = OraclePixelPyramid(**QUIET, **OFF)
    pyramid.prepare(scene, text)
    embedding = pyramid.crop_embedder(scene, 1)([(0, 0, 32, 32)])[0]              # inside class 0
    assert (embedding - text[0]) @ text[0] == pytest.approx(0.0, abs=1e-5)
    assert F.cosine_similarity(embedding, text[0], dim=0) == pytest.approx(1 / 17 ** 0.5, rel=1e-3)


def test_label_blur_is_the_earlier_model_and_the_model_name_is_checked():
    labels = block_labels(views=2)
    old = OracleTeacher(noise_model="label_blur", object_share=0.0, view_share=0.0, noise_std=0.0, token_norm=1.0)
    old.prepare(make_scene(labels), clip_text())
    torch.testing.assert_close(old.full_image(1), degrade(labels[1:2], clip_text(), blur_sigma=0.5)[0])
    with pytest.raises(ConfigError, match="teacher.noise_model.*'sclip'"):
        OracleTeacher(noise_model="sclip")
    with pytest.raises(TypeError):
        OracleTeacher(global_norms=3.0)                                          # a misspelt property
    assert isinstance(OracleTeacher().clip_like, ClipLikeFeatures)
