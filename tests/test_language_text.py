"""Text embeddings (memoised, truncation warning) and the pure parts of the text augmentation (LASER.md §8)."""

import os
import warnings

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from laser.language.text import CANONICAL_PHRASES, TextEncoder, encode_scene_text
from laser.language.text_augmentation import minmax_standardize, relevancy_targets, repeat_prompts

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def clip():
    return instantiate(OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "conf", "clip", "tiny.yaml")))


def test_repeat_prompts():
    assert repeat_prompts(["red apple", "lemon"]) == ["red apple red apple", "lemon lemon"]
    assert repeat_prompts(["a"], 3) == ["a a a"]
    with pytest.raises(ValueError):
        repeat_prompts(["a"], 0)


def test_minmax_standardisation_spans_unit_range_per_pixel_and_per_class():
    features, text = torch.randn(50, 512), torch.nn.functional.normalize(torch.randn(6, 512), dim=-1)
    per_pixel, per_class = relevancy_targets(features, text)
    assert per_pixel.shape == (50, 6) and per_class.shape == (6, 50)
    for standardized in (per_pixel, per_class):
        torch.testing.assert_close(standardized.amin(-1), torch.zeros(standardized.shape[0]))
        torch.testing.assert_close(standardized.amax(-1), torch.ones(standardized.shape[0]))
    relevancy = features @ text.T
    torch.testing.assert_close(per_class, minmax_standardize(relevancy, dim=0).T)


def test_minmax_eps_guards_constant_slices():
    constant = torch.ones(4, 1)
    assert torch.isnan(minmax_standardize(constant, dim=-1)).all()    # the official code's behaviour (C = 1)
    assert torch.equal(minmax_standardize(constant, dim=-1, eps=1e-6), torch.zeros(4, 1))


def test_text_embeddings_are_unit_and_computed_once(clip):
    encoder = TextEncoder(clip)
    calls = []
    original = clip.model.encode_text
    clip.model.encode_text = lambda tokens: calls.append(1) or original(tokens)
    try:
        first = encoder(["lemon", "red apple"])
        second = encoder(["lemon", "red apple"])
    finally:
        clip.model.encode_text = original
    assert first.shape == (2, 512) and first is second and len(calls) == 1
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(2))


def test_scene_text_holds_plain_repeated_and_canonical_prompts(clip):
    encoder = TextEncoder(clip)
    text = encode_scene_text(encoder, ["lemon", "red apple"])
    torch.testing.assert_close(text.repeated, encoder(["lemon lemon", "red apple red apple"]))
    assert not torch.allclose(text.embeddings, text.repeated)
    assert text.canonical.shape == (4, 512)
    torch.testing.assert_close(text.canonical, encoder(["object", "things", "stuff", "texture"]))
    assert CANONICAL_PHRASES == ("object", "things", "stuff", "texture")


def test_long_prompt_is_truncated_with_a_warning(clip):
    encoder = TextEncoder(clip)
    with pytest.warns(UserWarning, match="truncated"):
        encoder([" ".join(["banana"] * 100)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder(["a short prompt"])
