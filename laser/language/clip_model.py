"""CLIP through open_clip: a pretrained model found offline, a local checkpoint, or a tiny random model for tests.

Nothing downloads at run time on the project's machines (LASER.md, rulings). Before open_clip is called, the
weights are located on disk: a ``checkpoint`` file, or the open_clip caches (the Hugging Face hub cache for tags
that have an ``hf_hub`` entry, ``~/.cache/clip`` for URL tags). When they are nowhere, :class:`WeightsNotFoundError`
is raised at once, instead of open_clip's network retries (about 45 s offline), and says how to obtain them.

Command line, on a machine with network, to fill the cache once::

    python -m laser.language.clip_model --model ViT-B-16 --pretrained openai
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import laser  # noqa: F401  (laser.compat must run before open_clip imports torchvision)
import open_clip
import torch
from omegaconf import OmegaConf
from torch import nn

# The dtype of autocast on CUDA, by the ``precision`` config value. CPU always runs fp32.
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# The file names open_clip looks for in a hub repository, safetensors first (open_clip.pretrained).
_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class WeightsNotFoundError(FileNotFoundError):
    """The CLIP weights a config asks for are not on this machine."""

    def __init__(self, model: str, pretrained: str | None, problem: str):
        self.model = model
        self.pretrained = pretrained
        super().__init__(
            f"CLIP weights for model '{model}' (pretrained='{pretrained}') are not available: {problem}. "
            f"To obtain them, either run once on a machine with network: "
            f"`python -m laser.language.clip_model --model {model} --pretrained {pretrained}` "
            f"(fills the open_clip / Hugging Face cache; copy ~/.cache/huggingface or ~/.cache/clip here), "
            f"or pass a local file with `clip.checkpoint=/path/to/weights` "
            f"(an open_clip state dict, .bin/.pt/.safetensors), or set `clip.download=true` where network exists. "
            f"Tests and benchmarks that do not need real weights use `clip=tiny`."
        )


@dataclass
class ClipModel:
    """A frozen open_clip model with what its users need beside it.

    ``identity`` names the weights (model, tag or file, architecture) for cache manifests: features computed with
    different weights must never be mixed.
    """

    model: nn.Module                  # open_clip.CLIP, eval mode, requires_grad False
    tokenizer: Any                    # open_clip tokenizer: list[str] -> LongTensor [n, context_length]
    mean: tuple[float, float, float]  # image normalisation of this model
    std: tuple[float, float, float]
    precision: str                    # "fp32", "fp16" or "bf16": autocast dtype on CUDA
    identity: dict[str, Any]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def patch_size(self) -> int:
        return int(self.model.visual.patch_size[0])

    @property
    def image_size(self) -> int:
        return int(self.model.visual.image_size[0])

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """fp16/bf16 autocast on CUDA when the config asks for it; a no-op on CPU, where half matmuls are slow."""
        device = self.device
        if device.type == "cuda" and self.precision in _AUTOCAST_DTYPES:
            with torch.autocast("cuda", dtype=_AUTOCAST_DTYPES[self.precision]):
                yield
        else:
            yield

    def normalize_images(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, 3]`` in [0, 1] -> ``[B, 3, H, W]`` normalised with the model's mean and std."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype)
        return ((images - mean) / std).permute(0, 3, 1, 2).contiguous()


def _cached_hub_file(hf_hub: str, cache_dir: str | None) -> str | None:
    """Path of a hub file in the local Hugging Face cache, or None. Never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, filename = os.path.split(hf_hub)
    names = (filename,) if filename else _HUB_FILES
    for name in names:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _cached_url_file(url: str, cache_dir: str | None) -> str | None:
    """Path of a URL download in open_clip's own cache (``~/.cache/clip`` by default), or None."""
    folder = cache_dir or os.path.expanduser("~/.cache/clip")
    path = os.path.join(folder, os.path.basename(url))
    return path if os.path.isfile(path) else None


def resolve_weights(
    model: str, pretrained: str | None, checkpoint: str | None, cache_dir: str | None = None, download: bool = False
) -> str | None:
    """The local file holding the weights, or None for a random model (``pretrained`` and ``checkpoint`` both null).

    Raises :class:`WeightsNotFoundError` immediately when the weights are not on disk and ``download`` is false.
    """
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise WeightsNotFoundError(model, pretrained, f"checkpoint file {checkpoint} does not exist")
        return checkpoint
    if pretrained is None:
        return None
    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not tag_cfg:
        known = open_clip.list_pretrained_tags_by_model(model)
        raise WeightsNotFoundError(model, pretrained, f"open_clip knows no such tag (tags for this model: {known})")
    if tag_cfg.get("hf_hub"):
        found = _cached_hub_file(tag_cfg["hf_hub"], cache_dir)
        if found:
            return found
    if tag_cfg.get("url"):
        found = _cached_url_file(tag_cfg["url"], cache_dir)
        if found:
            return found
    if download:
        return open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    raise WeightsNotFoundError(model, pretrained, "they are in neither the Hugging Face cache nor ~/.cache/clip")


def load_clip(
    model: str = "ViT-B-16",
    pretrained: str | None = "openai",
    checkpoint: str | None = None,
    architecture: dict[str, Any] | None = None,
    precision: str = "fp16",
    device: str = "auto",
    download: bool = False,
    cache_dir: str | None = None,
    seed: int = 0,
) -> ClipModel:
    """Build a frozen CLIP in eval mode.

    Args:
        model: open_clip model name (``ViT-B-16``), or a free name when ``architecture`` is given.
        pretrained: open_clip tag (``openai``); null with ``architecture`` for a random model.
        checkpoint: a local weights file; takes precedence over the tag's cache lookup.
        architecture: an open_clip ``CLIP(**architecture)`` config (``embed_dim``, ``vision_cfg``, ``text_cfg``)
            for a model open_clip does not list, e.g. the tiny test model (``conf/clip/tiny.yaml``).
        precision: autocast dtype on CUDA (``fp16`` as in Laser, ``bf16`` or ``fp32``). Weights stay fp32.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``.
        download: allow open_clip to download missing weights (off: nothing downloads at run time).
        cache_dir: open_clip / hub cache folder; null for the defaults.
        seed: initialisation seed of a random model, so that tests and benchmarks are reproducible.
    """
    if precision not in ("fp32", *_AUTOCAST_DTYPES):
        raise ValueError(f"clip.precision must be fp32, fp16 or bf16, not {precision!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if OmegaConf.is_config(architecture):  # Hydra passes a DictConfig; open_clip wants plain dicts
        architecture = OmegaConf.to_container(architecture, resolve=True)
    if architecture is not None:
        clip, weights, tag_cfg = _build_from_architecture(model, architecture, checkpoint, seed)
    else:
        weights = resolve_weights(model, pretrained, checkpoint, cache_dir, download)
        tag_cfg = open_clip.get_pretrained_cfg(model, pretrained) if pretrained else {}
        clip = open_clip.create_model(
            model,
            pretrained=weights,
            # OpenAI's weights were trained with QuickGELU, which the plain ViT-B-16 config does not say.
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            # The OpenAI URL file is a TorchScript archive, which weights-only loading refuses.
            weights_only=not (weights or "").endswith(".pt"),
        )
    clip = clip.to(device).eval().requires_grad_(False)
    return ClipModel(
        model=clip,
        tokenizer=open_clip.get_tokenizer("ViT-B-16" if architecture is not None else model),
        mean=tuple(tag_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(tag_cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        precision=precision,
        identity={
            "model": model,
            "pretrained": pretrained,
            "weights": os.path.abspath(weights) if weights else None,
            "architecture": architecture,
            "seed": seed if weights is None else None,
        },
    )


def _build_from_architecture(
    model: str, architecture: dict[str, Any], checkpoint: str | None, seed: int
) -> tuple[nn.Module, str | None, dict[str, Any]]:
    """A CLIP of a given architecture: random (seeded) or loaded from ``checkpoint``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = open_clip.CLIP(**architecture)
    if checkpoint is not None:
        weights = resolve_weights(model, None, checkpoint)
        open_clip.load_checkpoint(clip, weights)
        return clip, weights, {}
    return clip, None, {}


def _main() -> None:
    parser = argparse.ArgumentParser(description="Download CLIP weights into the open_clip cache (needs network).")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--pretrained", default="openai")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    path = resolve_weights(args.model, args.pretrained, None, args.cache_dir, download=True)
    print(path)


if __name__ == "__main__":
    _main()
