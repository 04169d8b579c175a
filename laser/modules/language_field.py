"""LERF's language field (Kerr et al., ICCV 2023; LASER.md §14.6): ``F_lang(x, s) -> R^D`` and the DINO head
``F_dino(x) -> R^C``, view-independent, on one shared backbone.

Backbone (``backbone``):

* ``hashgrid`` (LERF): its own multi-resolution hash encoding (:class:`laser.fields.hashgrid.HashEncoding`) of the
  position over a fixed box. LERF concatenates two hash grids (12 levels of 8 features each, resolutions 16-128
  and 128-512, 2^19 entries); one grid of 24 levels over 16-512 gives the same 192 features with a similar spread
  of resolutions.
* ``appearance``: the frozen radiance field's per-point appearance features (what Laser and 3D-OVS build on), read
  without gradient: LERF's language and DINO losses never reach the radiance field.

The scale enters as in LERF's implementation: the world-space scale is concatenated to the backbone features before
the language MLP (LASER.md mentions a Mip-NeRF-style integrated encoding; the released code does not do that).
Widths follow LERF: a 256-wide MLP with 4 hidden layers for language, 1 hidden layer for DINO.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from laser.fields.base import RadianceField
from laser.fields.hashgrid import Backend, HashEncoding, mlp

BACKBONES = ("hashgrid", "appearance")


class LanguageField(nn.Module):
    """``F_lang`` and (when ``dino_dim``) ``F_dino`` over positions in the space rays live in.

    ``aabb`` ``[2, 3]`` is the box the hash encoding spans (fixed at construction); ``app_dim`` the width of the
    radiance field's appearance features (``appearance`` backbone).
    """

    def __init__(self, aabb: Tensor, app_dim: int, out_dim: int = 512, dino_dim: int | None = None,
                 backbone: str = "hashgrid", n_levels: int = 24, features_per_level: int = 8,
                 log2_hashmap_size: int = 19, base_resolution: int = 16, max_resolution: int = 512,
                 backend: Backend = "auto", hidden_dim: int = 256, n_hidden: int = 4, dino_hidden_dim: int = 256,
                 dino_n_hidden: int = 1):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"language field backbone must be one of {BACKBONES}, not {backbone!r}")
        self.encoding = None
        if backbone == "hashgrid":
            self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).clone())
            self.encoding = HashEncoding(n_levels, features_per_level, log2_hashmap_size, base_resolution,
                                         max_resolution, backend)
        width = self.encoding.n_output_dims if self.encoding is not None else app_dim
        self.language_net = mlp(width + 1, hidden_dim, out_dim, n_hidden)
        self.dino_net = mlp(width, dino_hidden_dim, dino_dim, dino_n_hidden) if dino_dim else None

    @property
    def encoding_backend(self) -> str | None:
        """``torch`` or ``tcnn`` for the hash-grid backbone (their parameters differ), None for ``appearance``."""
        return self.encoding.backend if self.encoding is not None else None

    def backbone(self, xyz: Tensor, field: RadianceField) -> Tensor:
        """Shared features ``[P, E]`` of positions ``[P, 3]``: the own hash encoding, or ``field``'s appearance
        features (no gradient)."""
        if self.encoding is None:
            with torch.no_grad():
                return field.app_features(xyz)
        return self.encoding((xyz - self.aabb[0]) / (self.aabb[1] - self.aabb[0]))

    def language(self, features: Tensor, scale: Tensor) -> Tensor:
        """``F_lang``: backbone features ``[P, E]`` and world-space scales ``[P]`` -> ``[P, D]`` (unnormalised;
        the rendered embedding is normalised after compositing)."""
        return self.language_net(torch.cat([features, scale[:, None].to(features.dtype)], dim=-1))

    def dino(self, features: Tensor) -> Tensor:
        """``F_dino``: backbone features ``[P, E]`` -> ``[P, C]``."""
        if self.dino_net is None:
            raise ValueError("this language field has no DINO head (built with dino_dim=None)")
        return self.dino_net(features)
