"""LERF's language field: shapes, scale conditioning, the two backbones, and no gradient into the radiance field."""

import pytest
import torch

from laser.fields.hashgrid import HashGridField
from laser.modules.language_field import LanguageField

AABB = torch.tensor([[-1.0, -2.0, -1.0], [1.0, 2.0, 3.0]])
SMALL = dict(n_levels=4, features_per_level=2, log2_hashmap_size=10, base_resolution=4, max_resolution=32,
             backend="torch", hidden_dim=32, n_hidden=2, dino_hidden_dim=16)


def small_field() -> HashGridField:
    return HashGridField(AABB, n_levels=2, log2_hashmap_size=8, max_resolution=16, hidden_dim=16,
                         hidden_dim_color=16, geo_feat_dim=7, backend="torch")


def test_hashgrid_backbone_shapes_and_box():
    torch.manual_seed(0)
    language = LanguageField(AABB, app_dim=7, out_dim=12, dino_dim=5, **SMALL)
    xyz = torch.rand(10, 3) * (AABB[1] - AABB[0]) + AABB[0]
    features = language.backbone(xyz, field=None)
    assert features.shape == (10, 8)
    # The box maps to the encoding's unit cube: its far corner is the cube's.
    torch.testing.assert_close(language.backbone(AABB[1:], None), language.encoding(torch.ones(1, 3)))
    assert language.language(features, torch.rand(10)).shape == (10, 12)
    assert language.dino(features).shape == (10, 5)
    assert language.encoding_backend == "torch"


def test_scale_is_an_input_of_the_language_head_only():
    torch.manual_seed(0)
    language = LanguageField(AABB, app_dim=7, out_dim=12, dino_dim=5, **SMALL)
    features = language.backbone(torch.zeros(3, 3), None)
    small = language.language(features, torch.full((3,), 0.1))
    assert not torch.allclose(small, language.language(features, torch.full((3,), 1.5)))
    # Concatenated after the encoding: the first layer sees [features, scale].
    assert language.language_net[0].in_features == features.shape[1] + 1


def test_appearance_backbone_reads_the_frozen_field_without_gradient():
    torch.manual_seed(0)
    field = small_field()
    language = LanguageField(AABB, app_dim=field.app_dim, out_dim=12, dino_dim=5, backbone="appearance", **SMALL)
    assert language.encoding is None and language.encoding_backend is None
    xyz = torch.rand(6, 3)
    features = language.backbone(xyz, field)
    torch.testing.assert_close(features, field.app_features(xyz))
    (language.language(features, torch.ones(6)).sum() + language.dino(features).sum()).backward()
    assert all(p.grad is None for p in field.parameters())
    assert all(p.grad is not None for p in language.parameters())


def test_no_dino_head_and_bad_backbone_are_refused():
    language = LanguageField(AABB, app_dim=7, out_dim=12, **SMALL)
    assert language.dino_net is None
    with pytest.raises(ValueError, match="no DINO head"):
        language.dino(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="backbone must be one of"):
        LanguageField(AABB, app_dim=7, backbone="tensorf", **SMALL)
