"""LERF's scale along a ray (LASER.md §14.6): the world-space size of an image-plane crop at each sample.

A crop whose side is ``s_img * H`` pixels (``s_img`` a fraction of the image height), seen through a pinhole of
focal length ``f_y`` pixels, spans ``s(t) = s_img * H * t / f_y`` scene units at distance ``t`` from the camera
centre: the footprint of the crop grows linearly with distance (a frustum). This is the form of LERF's
implementation; LASER.md writes ``s_img * f_xy / t``, which puts the distance on the wrong side (a crop would shrink
with distance) and is not implemented.

``t`` is the Euclidean distance of the sample from its camera centre, as in LERF's implementation (unit-length ray
directions). Off the optical axis the crop's exact footprint is smaller by a factor between ``cos θ`` and
``cos² θ``; LERF ignores it, and so do we.

Forward-facing scenes (``scene.ndc``) sample in NDC, where distances mean nothing metric. Samples are mapped back to
the world frame of the poses by the exact inverse of the NDC warp (:meth:`laser.data.scene.Scene.world_points`)
before ``t`` is measured, so scales are in scene units for every kind of scene. For LLFF / 3D-OVS scenes the loader
rescales the poses so that the nearest depth bound is ``1 / 0.75``: a scene unit is 0.75 times the nearest depth of
the capture, not a metre.
"""

from __future__ import annotations

from torch import Tensor

from laser.data.scene import Scene


def frustum_scale(image_scale: Tensor, distance: Tensor, height: int, fy: float) -> Tensor:
    """``s = s_img * H * t / f_y``: image-plane scales ``[P]`` (fractions of the image height) at distances ``[P]``
    from the camera -> world-space scales ``[P]``, in the units of the distances."""
    return image_scale * height * distance / fy


def sample_scales(scene: Scene, points: Tensor, centres: Tensor, image_scale: Tensor) -> Tensor:
    """World-space scales ``[P]`` of samples ``points`` ``[P, 3]`` (in the space rays live in, NDC or world) seen from
    camera centres ``centres`` ``[P, 3]`` (world) through crops of image-plane scale ``image_scale`` ``[P]``."""
    distance = (scene.world_points(points) - centres).norm(dim=-1)
    return frustum_scale(image_scale, distance, scene.height, scene.fy)
