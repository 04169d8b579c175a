"""Teachers: what supervises a language field, one per file, chosen by ``conf/teacher/<name>.yaml``.

* ``dense_clip``: Laser's on-the-fly dense CLIP features of random crops (LASER.md §3.1).
* ``pyramid_clip``: precomputed crop pyramids of global CLIP embeddings, 3D-OVS (§14.1) and LERF (§14.6) forms;
  the pyramid geometry and reading are ``pyramid.PyramidTeacher``'s, shared with the oracle.
* ``oracle``: features made from the ground-truth labels and the class text embeddings, degraded like CLIP, as
  dense token grids or as crop pyramids; a test harness that measures the 3D pipeline without CLIP weights.
"""

from laser.language.teachers.base import PatchBatch, Teacher

__all__ = ["PatchBatch", "Teacher"]
