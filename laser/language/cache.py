"""On-disk cache of teacher features: fp16, memory-mapped, with a manifest that detects a stale cache.

Laser recomputes dense CLIP on every step and stores nothing (LASER.md §3.4); 3D-OVS stores fp32 pyramids of
``3 x 512 x (H/8) x (W/8)`` per image (§14.1). The cache is optional: it trades disk for the per-step ViT forward.

A cache folder holds ``manifest.json`` and one ``features-<digest>.npy`` (``[N, ...]`` fp16, one row per view).
The manifest records everything the features depend on (model weights, crop/window settings, the images' shape and
a fingerprint of their content); a cache whose manifest differs is rebuilt. Writes are atomic: the array is written
under a temporary name and renamed, then the manifest is written the same way, and only the manifest's rename
commits the new cache, so an interrupted build leaves the previous cache (or none) readable and never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def fingerprint(tensor: Tensor) -> str:
    """A short content hash of a tensor (e.g. a scene's images), for manifests."""
    data = tensor.detach().cpu().contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _canonical(manifest: dict[str, Any]) -> str:
    return json.dumps({"format": FORMAT_VERSION, **manifest}, sort_keys=True, default=str)


class FeatureCache:
    """A folder of cached features for one scene and one teacher setting."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def load(self, manifest: dict[str, Any]) -> np.ndarray | None:
        """The cached array (read-only memory map), or None when absent or built with another manifest."""
        path = self.folder / MANIFEST
        if not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        if stored.get("settings") != json.loads(_canonical(manifest)):
            return None
        features = self.folder / stored["file"]
        if not features.is_file():
            return None
        return np.load(features, mmap_mode="r")

    def build(
        self, manifest: dict[str, Any], shape: tuple[int, ...], compute: Callable[[int], Tensor]
    ) -> np.ndarray:
        """Compute rows ``compute(i)`` (each of shape ``shape[1:]``) for ``i < shape[0]``, store fp16, commit."""
        self.folder.mkdir(parents=True, exist_ok=True)
        canonical = _canonical(manifest)
        name = f"features-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}.npy"
        handle, tmp_array = tempfile.mkstemp(dir=self.folder, suffix=".npy.tmp")
        os.close(handle)
        try:
            array = np.lib.format.open_memmap(tmp_array, mode="w+", dtype=np.float16, shape=tuple(shape))
            for index in range(shape[0]):
                array[index] = compute(index).detach().to("cpu", torch.float16).numpy()
            array.flush()
            del array
            os.replace(tmp_array, self.folder / name)
        finally:
            if os.path.exists(tmp_array):
                os.remove(tmp_array)
        self._write_manifest({"settings": json.loads(canonical), "file": name, "shape": list(shape),
                              "dtype": "float16"})
        for stale in self.folder.glob("features-*.npy"):
            if stale.name != name:
                stale.unlink()
        return np.load(self.folder / name, mmap_mode="r")

    def load_or_build(
        self, manifest: dict[str, Any], shape: tuple[int, ...], compute: Callable[[int], Tensor]
    ) -> np.ndarray:
        """The cache for ``manifest``, built first when it is missing or stale."""
        cached = self.load(manifest)
        if cached is not None and tuple(cached.shape) == tuple(shape):
            return cached
        return self.build(manifest, shape, compute)

    def _write_manifest(self, content: dict[str, Any]) -> None:
        handle, tmp = tempfile.mkstemp(dir=self.folder, suffix=".json.tmp")
        with os.fdopen(handle, "w") as stream:
            json.dump(content, stream, indent=1, sort_keys=True)
        os.replace(tmp, self.folder / MANIFEST)
