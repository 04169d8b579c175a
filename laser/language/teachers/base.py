"""The teacher interfaces a stage-2 method learns from: ``prepare`` once per scene, then one of three readings.

* :class:`TokenTeacher`: dense token grids of crop batches (Laser's SCLIP / MaskCLIP features, LASER.md §3.1).
* :class:`PixelPyramidTeacher`: per-pixel multi-scale maps of whole views (3D-OVS's crop pyramid, §14.1).
* :class:`ScalePyramidTeacher`: a crop-pyramid query at any pixel and scale (LERF, §14.6).

A method's supervision names the interface it reads (:attr:`~laser.methods.supervision.Supervision.teacher_type`);
the builder checks the configured teacher against it before anything is trained.
"""

from __future__ import annotations

from torch import Tensor, nn

from laser.data.patches import PatchBatch
from laser.data.scene import Scene


class Teacher(nn.Module):
    """What every teacher offers. Teachers are frozen: they hold no trainable parameters.

    Subclasses set ``patch_size`` and ``embed_dim`` and override :meth:`prepare` when they precompute per scene.
    """

    patch_size: int = 16
    embed_dim: int = 512

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


class TokenTeacher(Teacher):
    """Maps a crop batch to target features ``[B, P/16, P/16, D]``: one D-dim token per 16x16 block."""

    def forward(self, batch: PatchBatch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class PixelPyramidTeacher(Teacher):
    """Per-pixel multi-scale embeddings of whole views (3D-OVS)."""

    def maps(self, view: int) -> Tensor:  # pragma: no cover - abstract
        """``[S, D, H', W']`` embeddings of one view at ``S`` crop scales, ``H' = H // image_downsample``."""
        raise NotImplementedError


class ScalePyramidTeacher(Teacher):
    """A crop-pyramid embedding at any pixel and scale (LERF). ``scale_min`` / ``scale_max`` bound the scales (fractions
    of the image height) and ``image_downsample`` relates pyramid pixels to the scene's."""

    scale_min: float
    scale_max: float
    image_downsample: int

    def query(self, view: int, pixel_rc: Tensor, scale: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Targets ``[R, D]`` at pixels ``[R, 2]`` (row, col, in pyramid pixels) and scales ``[R]``."""
        raise NotImplementedError
