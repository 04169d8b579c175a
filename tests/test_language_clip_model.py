"""CLIP loading: the tiny random model, local checkpoints, and the immediate error for missing weights."""

import os
import time

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from laser.language.clip_model import WeightsNotFoundError, load_clip, resolve_weights

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "conf", "clip", "tiny.yaml"))


def tiny_kwargs(**overrides):
    config = OmegaConf.to_container(TINY)
    config.pop("_target_")
    return {**config, **overrides}


def test_tiny_clip_has_the_real_shapes():
    clip = instantiate(TINY)
    assert (clip.patch_size, clip.image_size, clip.embed_dim, clip.context_length) == (16, 224, 512, 77)
    assert not any(p.requires_grad for p in clip.model.parameters())
    assert not clip.model.training


def test_tiny_clip_is_seeded():
    a, b = load_clip(**tiny_kwargs()), load_clip(**tiny_kwargs())
    c = load_clip(**tiny_kwargs(seed=1))
    assert torch.equal(a.model.visual.proj, b.model.visual.proj)
    assert not torch.equal(a.model.visual.proj, c.model.visual.proj)


def test_local_checkpoint_round_trip(tmp_path):
    source = load_clip(**tiny_kwargs(seed=3))
    path = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), path)
    loaded = load_clip(**tiny_kwargs(seed=0, checkpoint=str(path)))
    assert torch.equal(loaded.model.visual.conv1.weight, source.model.visual.conv1.weight)
    assert loaded.identity["weights"] == str(path.resolve())


def test_missing_weights_fail_at_once_and_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache, whatever this machine holds
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as error:
        load_clip("ViT-B-16", "openai", cache_dir=str(tmp_path), device="cpu")
    assert time.perf_counter() - start < 2.0
    message = str(error.value)
    assert "ViT-B-16" in message and "openai" in message
    assert "clip.checkpoint=" in message and "python -m laser.language.clip_model" in message


def test_missing_checkpoint_file_and_unknown_tag(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_weights("ViT-B-16", "openai", str(tmp_path / "absent.pt"))
    with pytest.raises(WeightsNotFoundError, match="no such tag"):
        resolve_weights("ViT-B-16", "no-such-tag", None, cache_dir=str(tmp_path))


def test_precision_is_checked():
    with pytest.raises(ValueError, match="precision"):
        load_clip(**tiny_kwargs(precision="fp8"))
