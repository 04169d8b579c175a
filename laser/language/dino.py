"""DINO ViT patch features (Caron et al., ICCV 2021) for the regularisers of LERF (LASER.md §14.6) and 3D-OVS
(§14.4 b), through timm.

Nothing downloads at run time (LASER.md, rulings): the weights come from a local file, or from a cache already on
disk (timm's Hugging Face hub files, or the original release in torch hub's checkpoint folder). DINO is optional:
when the weights are nowhere, :func:`load_dino` says so once and returns None, and the methods train without the
regulariser.

The architecture is read from the weights themselves (width, patch size, depth; heads of 64 channels as in every
DINO ViT), so a ViT-S/8 (LERF, 384-d) and a ViT-B/8 (3D-OVS, 768-d) file load through the same call.
"""

from __future__ import annotations

import os
import re

import laser  # noqa: F401  (laser.compat must run before timm imports torchvision)
import torch
from timm.models import get_pretrained_cfg
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn

from laser.language.clip_model import _cached_hub_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MODEL = "vit_small_patch8_224.dino"   # LERF's dino_vits8
HEAD_DIM = 64                                  # channels per attention head in all DINO ViTs
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


class DinoExtractor(nn.Module):
    """Images ``[B, H, W, 3]`` in [0, 1] -> patch features ``[B, H // p, W // p, C]``: the output of the last
    transformer block (before the final norm, as 3D-OVS's forward hook reads it), class token dropped, after
    ImageNet normalisation. Any image size works (position embeddings are interpolated); rows and columns beyond
    the last whole patch are ignored. Frozen."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        if not vit.dynamic_img_size:
            raise ValueError("DinoExtractor needs a ViT built with dynamic_img_size=True (any image size)")
        self.vit = vit.eval().requires_grad_(False)
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.embed_dim = int(vit.embed_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD), persistent=False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        p = self.patch_size
        whole = images[:, : images.shape[1] // p * p, : images.shape[2] // p * p]
        pixels = ((whole - self.mean) / self.std).permute(0, 3, 1, 2).contiguous()
        (last,) = self.vit.forward_intermediates(pixels, indices=1, norm=False, output_fmt="NCHW",
                                                 intermediates_only=True)
        return last.permute(0, 2, 3, 1)


def vit_from_state_dict(state: dict[str, Tensor]) -> VisionTransformer:
    """A DINO ViT whose shape is read from its state dict (timm's or the original release's keys), loaded."""
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise ValueError("not a ViT state dict (no patch_embed.proj.weight / pos_embed): DINO weights must be a plain "
                         "state dict, as released (dino_*_pretrain.pth) or as timm stores it")
    proj = state["patch_embed.proj.weight"]                          # [C, 3, p, p]
    width, patch = proj.shape[0], proj.shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
    vit = VisionTransformer(img_size=grid * patch, patch_size=patch, embed_dim=width, depth=depth,
                            num_heads=width // HEAD_DIM, mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / width,
                            num_classes=0, dynamic_img_size=True)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    vit.load_state_dict(checkpoint_filter_fn(state, vit))
    return vit


def _read_state_dict(path: str) -> dict[str, Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def cached_weights(model: str = DEFAULT_MODEL) -> str | None:
    """A file with timm ``model``'s pretrained weights already on disk, or None. Never touches the network."""
    cfg = get_pretrained_cfg(model)
    if cfg is None:
        raise ValueError(f"timm knows no pretrained model {model!r} (DINO ViTs: vit_small_patch8_224.dino, "
                         f"vit_base_patch8_224.dino, ...)")
    if cfg.hf_hub_id:
        for name in _HUB_FILES:
            found = _cached_hub_file(f"{cfg.hf_hub_id}/{name}", None)
            if found:
                return found
    if cfg.url:
        legacy = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg.url))
        if os.path.isfile(legacy):
            return legacy
    return None


def load_dino(path: str | None = None, model: str = DEFAULT_MODEL) -> DinoExtractor | None:
    """The DINO extractor from the weights file ``path``, or from the caches of timm ``model`` when ``path`` is None.

    When the weights are absent, prints one message and returns None: the caller goes on without DINO.
    """
    found = path if path is not None else cached_weights(model)
    if found is None or not os.path.isfile(found):
        where = f"file {path} does not exist" if path is not None else (
            f"timm model {model!r} is in neither the Hugging Face cache nor {torch.hub.get_dir()}/checkpoints")
        print(f"DINO weights not found ({where}); the run continues without the DINO regulariser. To use it, pass a "
              f"local DINO ViT state dict (e.g. dino_deitsmall8_pretrain.pth) as the DINO weights path, or fill the "
              f"cache once on a machine with network: python -c \"import timm; timm.create_model('{model}', "
              f"pretrained=True)\"")
        return None
    return DinoExtractor(vit_from_state_dict(_read_state_dict(found)))
