import numpy as np
import pytest
import torch
from PIL import Image

from laser.evaluation.pictures import (TURBO, class_boundaries, class_palette, label_map_image, legend,
                                       relevancy_map, save_png, segmentation_overlay, with_legend)


def toy_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A 20x30 render with class 0 on the left, 1 on the right and a 2 block in the middle."""
    torch.manual_seed(0)
    rgb = torch.rand(20, 30, 3)
    labels = torch.zeros(20, 30, dtype=torch.long)
    labels[:, 15:] = 1
    labels[5:12, 8:14] = 2
    return rgb, labels


def test_palette_is_deterministic_distinct_and_stable_as_classes_grow():
    palette = class_palette(64)
    assert palette.shape == (64, 3) and palette.dtype == np.uint8
    assert np.array_equal(palette, class_palette(64))
    assert len({tuple(c) for c in palette}) == 64
    assert not (palette == 0).all(axis=1).any()  # black is kept for boundaries
    assert np.array_equal(class_palette(5), palette[:5])
    assert class_palette(0).shape == (0, 3)


def test_overlay_blends_interior_pixels_and_blackens_boundaries():
    rgb, labels = toy_scene()
    palette = class_palette(3)
    image = segmentation_overlay(rgb, labels, palette)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8

    interior = (2, 3)  # class 0, all 4 neighbours class 0
    expected = np.round((0.35 * rgb[interior].numpy() + 0.65 * palette[0] / 255) * 255)
    assert np.abs(image[interior].astype(int) - expected).max() <= 1
    assert (image[2, 14] == 0).all() and (image[2, 15] == 0).all()  # the 0|1 boundary, both sides
    assert (image[8, 8] == 0).all() and (image[8, 7] == 0).all()    # the 0|2 boundary, both sides


def test_boundaries_follow_four_neighbourhood():
    labels = np.zeros((5, 5), dtype=int)
    labels[2, 2] = 1
    expected = np.zeros((5, 5), dtype=bool)
    expected[2, 2] = expected[1, 2] = expected[3, 2] = expected[2, 1] = expected[2, 3] = True
    assert np.array_equal(class_boundaries(labels), expected)  # diagonal neighbours are not boundaries


def test_alpha_zero_returns_the_render():
    rgb, labels = toy_scene()
    image = segmentation_overlay(rgb, labels, class_palette(3), alpha=0.0, boundaries=False)
    assert np.array_equal(image, np.round(rgb.numpy() * 255).astype(np.uint8))
    full = segmentation_overlay(rgb, labels, class_palette(3), alpha=1.0, boundaries=False)
    assert np.array_equal(full, label_map_image(labels, class_palette(3)))


def test_label_map_image_and_label_checks():
    _, labels = toy_scene()
    palette = class_palette(3)
    image = label_map_image(labels, palette)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    assert np.array_equal(image[0, 0], palette[0]) and np.array_equal(image[8, 10], palette[2])
    with pytest.raises(ValueError):
        label_map_image(labels, class_palette(2))
    with pytest.raises(ValueError):
        label_map_image(labels - 1, palette)


def test_legend_has_a_swatch_and_text_in_every_row_and_grows_with_classes():
    names = ["bed", "pillow", "teddy bear", "wall"]
    palette = class_palette(len(names))
    key = legend(names, palette)
    assert key.ndim == 3 and key.shape[2] == 3 and key.dtype == np.uint8
    for colour in palette:
        rows = np.where((key == colour).all(-1).any(1))[0]
        assert len(rows) > 0
        band = key[rows.min():rows.max() + 1]
        swatch_end = np.where((band == colour).all(-1).any(0))[0].max()
        text = band[:, swatch_end + 3:]
        assert (text.max(-1) < 128).any()  # dark text pixels beside the swatch
    bigger = legend(names + ["sofa", "lamp"], class_palette(6))
    assert bigger.shape[0] > key.shape[0]
    assert legend(["a much longer class name"], palette).shape[1] > legend(["a"], palette).shape[1]


def test_with_legend_pads_the_shorter_picture():
    picture = np.zeros((10, 7, 3), dtype=np.uint8)
    key = np.zeros((25, 4, 3), dtype=np.uint8)
    joined = with_legend(picture, key)
    assert joined.shape == (25, 11, 3) and joined.dtype == np.uint8
    assert (joined[10:, :7] == 255).all() and (joined[:, 7:] == 0).all()
    assert with_legend(key, picture).shape == (25, 11, 3)


def test_relevancy_map_endpoints_are_the_colour_map_endpoints():
    scores = torch.linspace(-0.3, 0.7, 12).reshape(3, 4)
    image = relevancy_map(scores)
    assert image.shape == (3, 4, 3) and image.dtype == np.uint8
    assert np.array_equal(image[0, 0], TURBO[0]) and np.array_equal(image[-1, -1], TURBO[-1])
    assert np.array_equal(relevancy_map(scores * 10 + 3), image)  # min-max normalised per map
    assert (relevancy_map(torch.full((2, 2), 0.4)) == TURBO[0]).all()
    with pytest.raises(ValueError):
        relevancy_map(scores, cmap="viridis")


def test_save_png_round_trip(tmp_path):
    rgb, labels = toy_scene()
    image = segmentation_overlay(rgb, labels, class_palette(3))
    path = save_png(tmp_path / "deep" / "overlay.png", image)
    assert np.array_equal(np.asarray(Image.open(path)), image)
