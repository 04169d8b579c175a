"""Teachers: what supervises a language field, chosen by ``conf/teacher/<source>/<method>.yaml``.

The interfaces (``base``): token grids of crops (Laser), per-pixel crop-pyramid maps (3D-OVS), a crop-pyramid query
(LERF). The sources, one per file:

* ``dense_clip``: Laser's on-the-fly dense CLIP features of random crops (LASER.md §3.1).
* ``pyramid_clip``: precomputed crop pyramids of global CLIP embeddings, 3D-OVS (§14.1) and LERF (§14.6); the pyramid
  geometry and reading are ``pyramid``'s, shared with the oracle.
* ``oracle``: features made from the ground-truth labels and the class text embeddings, degraded like CLIP, as
  token grids or as crop pyramids; a test harness that measures the 3D pipeline without CLIP weights.
"""

from laser.language.teachers.base import PixelPyramidTeacher, ScalePyramidTeacher, Teacher, TokenTeacher

__all__ = ["PixelPyramidTeacher", "ScalePyramidTeacher", "Teacher", "TokenTeacher"]
