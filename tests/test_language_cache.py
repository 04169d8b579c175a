"""Feature cache: fp16 round trip, stale manifests rebuilt, atomic writes; the dense teacher reading from it."""

import os

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from laser.language.cache import FeatureCache
from laser.data.patches import PatchBatch
from test_language_oracle import make_scene

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rows(calls):
    def compute(index):
        calls.append(index)
        return torch.full((2, 3), float(index) + 0.25)
    return compute


def test_round_trip_is_fp16_and_memory_mapped(tmp_path):
    calls = []
    array = FeatureCache(tmp_path).load_or_build({"a": 1}, (3, 2, 3), rows(calls))
    assert isinstance(array, np.memmap) and array.dtype == np.float16 and calls == [0, 1, 2]
    np.testing.assert_array_equal(array[2], np.full((2, 3), 2.25, np.float16))
    again = FeatureCache(tmp_path).load_or_build({"a": 1}, (3, 2, 3), rows(calls))
    assert calls == [0, 1, 2]                                  # not recomputed
    np.testing.assert_array_equal(again, array)


def test_stale_manifest_is_rebuilt(tmp_path):
    calls = []
    FeatureCache(tmp_path).load_or_build({"stride": 112}, (2, 2, 3), rows(calls))
    assert FeatureCache(tmp_path).load({"stride": 64}) is None
    FeatureCache(tmp_path).load_or_build({"stride": 64}, (2, 2, 3), rows(calls))
    assert calls == [0, 1, 0, 1]
    assert len(list(tmp_path.glob("features-*.npy"))) == 1     # the stale array is removed


def test_interrupted_build_keeps_the_previous_cache(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.build({"v": 1}, (2, 2, 3), rows([]))

    def failing(index):
        if index == 1:
            raise RuntimeError("interrupted")
        return torch.zeros(2, 3)

    with pytest.raises(RuntimeError, match="interrupted"):
        cache.build({"v": 2}, (2, 2, 3), failing)
    assert cache.load({"v": 2}) is None
    np.testing.assert_array_equal(cache.load({"v": 1})[1], np.full((2, 3), 1.25, np.float16))
    assert not list(tmp_path.glob("*.tmp"))


def test_dense_teacher_reads_crops_from_the_cache(tmp_path):
    config = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "conf", "teacher", "clip", "laser.yaml"))
    config.clip = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "conf", "clip", "tiny.yaml"))
    config.cache_dir, config.window, config.stride = str(tmp_path), 64, 32
    teacher = instantiate(config)
    scene = make_scene(torch.zeros(2, 96, 128, dtype=torch.long))
    teacher.prepare(scene, torch.zeros(4, 512))
    full = teacher.dense.sliding_window(scene.images[1], 64, 32)
    torch.testing.assert_close(torch.from_numpy(np.asarray(teacher.cached[1], np.float32)), full,
                               atol=2e-2, rtol=1e-2)
    batch = PatchBatch(images=torch.rand(2, 32, 32, 3), views=torch.tensor([1, 1]),
                       top_left=torch.tensor([[16, 32], [24, 40]]))
    crops = teacher(batch)
    cached = torch.from_numpy(np.asarray(teacher.cached[1], np.float32))
    torch.testing.assert_close(crops[0], cached[1:3, 2:4])                    # aligned: exact tokens
    expected = (cached[1:3, 2:4] + cached[2:4, 2:4] + cached[1:3, 3:5] + cached[2:4, 3:5]) / 4
    torch.testing.assert_close(crops[1], expected)                            # half a token off: bilinear
    # Stale when the images change: the cache is rebuilt.
    scene.images = torch.rand_like(scene.images)
    teacher.prepare(scene, torch.zeros(4, 512))
    assert not np.allclose(np.asarray(teacher.cached[1], np.float32), full.numpy(), atol=2e-2)
