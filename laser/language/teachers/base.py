"""The teacher interface the training loop knows: ``prepare`` once per scene, then call on crop batches."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from laser.data.scene import Scene


@dataclass
class PatchBatch:
    """A batch of square crops of the scene's images at its working resolution."""

    images: Tensor               # [B, P, P, 3] float in [0, 1]
    views: Tensor                # [B] long, view index of each crop
    top_left: Tensor             # [B, 2] long, (row, col) of the crop's first pixel in its view
    labels: Tensor | None = None  # [B, P, P] long ground-truth class (-1 unlabelled), when the scene has labels

    @property
    def crop_size(self) -> int:
        return int(self.images.shape[1])


class Teacher(nn.Module):
    """Maps a crop batch to target features ``[B, P/16, P/16, D]``: one D-dim token per 16x16 block.

    Subclasses set ``patch_size`` and ``embed_dim``, override :meth:`prepare` when they precompute per scene, and
    implement :meth:`forward`. Teachers are frozen: they hold no trainable parameters.

    ``form`` says what else a teacher offers, and so which methods it can teach: ``dense`` (token grids only: Laser),
    ``ovs3d`` (also per-pixel multi-scale maps, ``maps(view)``: 3D-OVS) or ``lerf`` (also a crop-pyramid query,
    ``query(view, pixel_rc, scale)``: LERF).
    """

    patch_size: int = 16
    embed_dim: int = 512
    form: str = "dense"

    def prepare(self, scene: Scene, text_embeddings: Tensor) -> None:
        """Per-scene precomputation. ``text_embeddings``: ``[C, D]`` L2-normalised, in ``scene.classes`` order."""

    def stored_bytes(self) -> int:
        """Bytes of teacher features held for the whole scene (precomputed maps or pyramids); 0 when computed on
        the fly per batch."""
        return 0

    def rng_state(self) -> Tensor | None:
        """State of the teacher's own random generator, for bit-exact resumption (None: it draws nothing)."""
        return None

    def set_rng_state(self, state: Tensor | None) -> None:
        pass

    def forward(self, batch: PatchBatch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
