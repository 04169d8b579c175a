"""Crop pyramids of global CLIP embeddings (3D-OVS and LERF forms): geometry and interpolation by hand."""

import os

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from laser.data.patches import PatchBatch
from laser.language.teachers.pyramid import (LerfLayer, bilinear_layer, lerf_layer_geometry, ovs3d_boxes, paint,
                                            query_layers)
from laser.language.teachers.pyramid_clip import PixelPyramidClip, ScalePyramidClip
from test_language_oracle import make_scene

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def clip():
    return instantiate(OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "conf", "clip", "tiny.yaml")))


def test_ovs3d_crop_grid_with_remainder_row():
    generator = torch.Generator().manual_seed(0)
    boxes = ovs3d_boxes(100, 103, divisor=5, stride_fraction=0.25, jitter_fraction=0.0, generator=generator)
    tops = sorted({b[0] for b in boxes})
    lefts = sorted({b[1] for b in boxes})
    assert tops == list(range(0, 81, 5))                    # s = 20, stride 5, no remainder
    assert lefts == list(range(0, 81, 5)) + [83]            # the extra last column
    assert all(b[2] - b[0] == 20 and b[3] - b[1] == 20 for b in boxes)


def test_ovs3d_jitter_enlarges_within_a_quarter_and_clips():
    generator = torch.Generator().manual_seed(0)
    plain = ovs3d_boxes(60, 80, 5, 0.25, 0.0, torch.Generator())
    jittered = ovs3d_boxes(60, 80, 5, 0.25, 0.25, generator)
    for (top, left, bottom, right), (top2, left2, bottom2, right2) in zip(plain, jittered):
        assert top - 3 <= top2 <= top and left - 3 <= left2 <= left
        assert bottom <= bottom2 <= bottom + 3 and right <= right2 <= right + 3
        assert top2 >= 0 and left2 >= 0 and bottom2 <= 60 and right2 <= 80


def test_paint_averages_the_covering_crops():
    generator = torch.Generator().manual_seed(0)
    boxes = ovs3d_boxes(30, 41, 3, 0.25, 0.25, generator)
    embeddings = torch.randn(len(boxes), 5, generator=generator)
    total, count = torch.zeros(5, 30, 41), torch.zeros(30, 41)
    for (top, left, bottom, right), embedding in zip(boxes, embeddings):
        total[:, top:bottom, left:right] += embedding[:, None, None]
        count[top:bottom, left:right] += 1
    torch.testing.assert_close(paint(boxes, embeddings, 30, 41), total / count)


def test_lerf_layer_geometry():
    assert lerf_layer_geometry(100, 150, 0.2, 0.5) == (20, 10.0, 11, 16)


def test_bilinear_and_trilinear_against_hand_computation():
    values = torch.arange(12.0).reshape(3, 4, 1)             # crop (i, j) value 4 i + j, centres 10 px apart
    low = LerfLayer(scale=0.1, crop_size=20, stride=10.0, embeddings=values)
    high = LerfLayer(scale=0.3, crop_size=60, stride=10.0, embeddings=values * 10)
    pixel = torch.tensor([[5.0, 12.0]])                       # grid index (0.5, 1.2): 0.5*(1.2) + 0.5*(5.2) = 3.2
    torch.testing.assert_close(bilinear_layer(low, pixel), torch.tensor([[3.2]]))
    # Scale 0.15 is a quarter of the way from 0.1 to 0.3: 0.75 * 3.2 + 0.25 * 32 = 10.4.
    torch.testing.assert_close(query_layers([low, high], pixel, torch.tensor([0.15])), torch.tensor([[10.4]]))
    # Scales outside the pyramid clamp to its ends; a pixel past the last centre repeats the border crops.
    torch.testing.assert_close(query_layers([low, high], pixel, torch.tensor([0.9])), torch.tensor([[32.0]]))
    torch.testing.assert_close(bilinear_layer(low, torch.tensor([[30.0, 40.0]])), torch.tensor([[11.0]]))


def test_pyramid_teacher_forms(clip):
    scene = make_scene(torch.zeros(1, 32, 48, dtype=torch.long))
    ovs = PixelPyramidClip(clip, divisors=(2, 3, 4), stride_fraction=0.5, batch_size=256)
    ovs.prepare(scene, torch.zeros(4, 512))
    assert ovs.maps(0).shape == (3, 512, 32, 48) and ovs.stored_bytes() == 3 * 512 * 32 * 48 * 4
    batch = PatchBatch(images=torch.rand(1, 16, 16, 3), views=torch.tensor([0]), top_left=torch.tensor([[16, 16]]))
    expected = ovs.maps(0)[:, :, 16:32, 16:32].mean(dim=(0, 2, 3))
    torch.testing.assert_close(ovs(batch)[0, 0, 0], expected)

    lerf = ScalePyramidClip(clip, num_layers=3, scale_min=0.25, scale_max=0.75, batch_size=256)
    lerf.prepare(scene, torch.zeros(4, 512))
    assert [layer.embeddings.shape[:2] for layer in lerf.pyramids[0]] == [(9, 13), (5, 7), (4, 5)]
    assert lerf.query(0, torch.tensor([[10.0, 20.0], [31.0, 47.0]]), torch.tensor([0.3, 0.6])).shape == (2, 512)
    # A 16-px crop of a 32-px-high image has scale 0.5: its token centre (24, 24) is crop (3, 3) of layer 2.
    torch.testing.assert_close(lerf(batch)[0, 0, 0], lerf.pyramids[0][1].embeddings[3, 3])
    assert lerf.stored_bytes() == (9 * 13 + 5 * 7 + 4 * 5) * 512 * 4
    assert not hasattr(lerf, "maps") and not hasattr(ovs, "query")  # each pyramid offers its own reading
