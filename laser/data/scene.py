"""One scene in memory: images, cameras, ray parametrisation and (optional) segmentation ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from laser.data.rays import camera_rays, ndc_rays, ndc_to_world, pixel_directions


@dataclass
class Scene:
    """Everything a method needs from a scene, at one working resolution.

    Class indices are alphabetical ranks of the class prompts everywhere (LASER.md §1.1).
    """

    name: str
    images: Tensor                       # [N, H, W, 3] float32 in [0, 1]
    c2w: Tensor                          # [N, 3, 4] camera-to-world, OpenGL axes (right, up, back, centre)
    fx: float
    fy: float
    ndc: bool                            # rays are warped to NDC (forward-facing scenes)
    near_far: tuple[float, float]        # sampling range of the ray parameter t
    aabb: Tensor                         # [2, 3] scene bounds in the (NDC or world) space rays live in
    image_paths: list[str]
    train_views: list[int]
    test_views: list[int]
    classes: list[str] = field(default_factory=list)        # sorted prompts; empty when no segmentation/
    annotations: dict[int, Tensor] = field(default_factory=dict)  # view -> [H, W, C] bool ground-truth masks
    labels: Tensor | None = None         # [N, H, W] int64 class index, -1 unlabelled (scenes with labels/)
    white_background: bool = False
    # 3D-OVS scores a pixel in no mask as wrong (LASER.md §11). Scenes over a transparent background (360° object
    # captures, the synthetic 360° scene) set False: their background is no class, and its pixels are not scored.
    score_unlabelled: bool = True

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    @property
    def num_views(self) -> int:
        return self.images.shape[0]

    @property
    def annotated_views(self) -> list[int]:
        return sorted(self.annotations)

    def rays(self, view: int) -> Tensor:
        """Rays of every pixel of one view, row-major: ``[H*W, 6]`` (origin, direction)."""
        return self.camera_rays(self.c2w[view]).reshape(-1, 6)

    def camera_rays(self, c2w: Tensor, height: int | None = None, width: int | None = None,
                    fx: float | None = None, fy: float | None = None) -> Tensor:
        """Rays ``[height, width, 6]`` of any camera ``c2w`` ``[3, 4]`` (a novel view: a video path, the viewer's
        camera), in the space this scene's rays live in. The image size defaults to the scene's and the focal
        lengths to the scene's scaled with it (the same field of view). For forward-facing scenes the NDC warp is
        this scene's whatever the camera's intrinsics: the space the field was trained in."""
        height, width = height or self.height, width or self.width
        fx = fx if fx is not None else self.fx * width / self.width
        fy = fy if fy is not None else self.fy * height / self.height
        directions = pixel_directions(height, width, fx, fy)
        rays_o, rays_d = camera_rays(directions, c2w.to(directions), normalize=not self.ndc)
        if self.ndc:
            rays_o, rays_d = ndc_rays(rays_o, rays_d, self.height, self.width, self.fx, near=1.0)
        return torch.cat([rays_o, rays_d], dim=-1)

    def world_points(self, points: Tensor) -> Tensor:
        """Points ``[..., 3]`` of the space rays live in -> world coordinates (the frame of ``c2w``): the NDC
        warp of :meth:`rays` is undone for forward-facing scenes."""
        if not self.ndc:
            return points
        return ndc_to_world(points, self.height, self.width, self.fx, near=1.0)

    def all_rays(self, views: list[int]) -> tuple[Tensor, Tensor]:
        """Rays ``[V*H*W, 6]`` and colours ``[V*H*W, 3]`` of the given views."""
        rays = torch.cat([self.rays(v) for v in views])
        rgbs = self.images[views].reshape(-1, 3)
        return rays, rgbs
