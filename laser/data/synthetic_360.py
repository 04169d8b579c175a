"""The synthetic benchmark's 360° variant: the table-top objects on a round table, cameras on an orbit around them.

The objects, textures, lighting and ray caster are :mod:`laser.data.synthetic`'s (the look-alike pairs included);
the wall and the rectangular table are replaced by a round table on a pedestal, so that every side of the scene is
seen, over a transparent background (the images are RGBA; background pixels are no class). The cameras circle the
table once, looking at its centre from 20-40° above the table top, which they see from every side.

One folder holds the scene in four layouts over the same images (nerfstudio, Blender, 3D-OVS, LERF-OVS):

    <out>/images/frame_<n>.png                   RGBA uint8, n = 1, 2, ... (ns-process-data's names)
    <out>/transforms.json                        nerfstudio: shared pinhole intrinsics, OpenGL camera-to-world
    <out>/sparse_pc.ply                          surface points (nerfstudio's ply_file_path): the scene's box
    <out>/transforms_train.json, _test.json      Blender: the same frames, every 8th held out for testing
    <out>/segmentations/classes.txt, <view>/<prompt>.png, <out>/labels/frame_<n>.png   as the forward scene
    <out>/lerf_ovs/frame_<n>.json                LERF-OVS (LangSplat's labelme JSON) for the annotated views
    <out>/synthetic.json                         the generator's parameters

``scene=synthetic_360`` trains on it through the nerfstudio reader (world-space rays in the box of its points,
:mod:`laser.data.captures`). In ``lerf_ovs/`` each object is listed with the outer boundary of each visible piece
(holes, such as the gap of the mug's handle, are filled) and that piece's box; the table is not listed (LERF-OVS
annotates the objects one asks for, not the surface they stand on).

Run ``python -m laser.data.synthetic_360 --out data/synthetic_360`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import contourpy
import numpy as np

from laser.data.ply import write_ply
from laser.data.synthetic import (OBJECTS, TABLE_TOP, VERSION, Primitive, SceneObject, Texture, annotated_views,
                                  camera_directions, focal_length, jittered, render_view, save_masks, save_png,
                                  trace, write_generated)

TABLE_RADIUS = 2.3
TABLE_THICKNESS = 0.12
# The forward scene's objects stand around z = -3.3: moved onto the round table's centre.
SHIFT = np.array([0.0, 0.0, 3.3])

ORBIT_OBJECTS: tuple[SceneObject, ...] = (
    SceneObject("wooden table",
                (Primitive("cylinder", (0.0, TABLE_TOP - TABLE_THICKNESS / 2, 0.0),
                           (TABLE_RADIUS, TABLE_THICKNESS / 2, 0.0)),
                 Primitive("cylinder", (0.0, TABLE_TOP - TABLE_THICKNESS - 0.7, 0.0), (0.22, 0.7, 0.0))),
                Texture((0.60, 0.40, 0.22), (0.45, 0.28, 0.14), "stripes", period=0.45, axis=0, noise=0.06),
                movable=False),
    *(replace(obj, primitives=tuple(replace(p, center=tuple(float(c) for c in np.asarray(p.center) + SHIFT))
                                    for p in obj.primitives))
      for obj in OBJECTS if obj.movable),
)
CLASSES_360: tuple[str, ...] = tuple(obj.prompt for obj in ORBIT_OBJECTS)

LOOK_AT = np.array([0.0, TABLE_TOP + 0.3, 0.0])
ORBIT_DISTANCE = 4.8
ELEVATION = (20.0, 40.0)          # degrees above the look-at point, two oscillations per turn
HOLDOUT_EVERY = 8                 # the Blender layout's test split: the views nerfstudio's reader holds out


def orbit_poses(views: int) -> np.ndarray:
    """Camera-to-world ``[V, 3, 4]``, OpenGL axes, once around :data:`LOOK_AT` (y up), looking at it."""
    c2w = np.zeros((views, 3, 4))
    low, high = ELEVATION
    for v in range(views):
        azimuth = 2 * math.pi * v / views
        elevation = math.radians(low + (high - low) * 0.5 * (1 - math.cos(4 * math.pi * v / views)))
        back = np.array([math.cos(elevation) * math.sin(azimuth), math.sin(elevation),
                         math.cos(elevation) * math.cos(azimuth)])
        right = np.cross([0.0, 1.0, 0.0], back)
        right /= np.linalg.norm(right)
        c2w[v] = np.stack([right, np.cross(back, right), back, LOOK_AT + ORBIT_DISTANCE * back], axis=1)
    return c2w


def outlines(mask: np.ndarray, min_pixels: int = 4) -> list[tuple[list[list[int]], list[int]]]:
    """The outer boundary polygon and box ``[x1, y1, x2, y2]`` of each piece of a ``[H, W]`` bool mask that has
    ``min_pixels`` or more pixels.

    Vertices are the centres of the piece's boundary pixels (integers), so that filling the polygon, boundary
    included (OpenCV's ``fillPoly``, PIL's ``polygon``), gives the piece back, holes filled. They come from the
    mask's iso-line just inside the pixel centres (level 0.999: 0.001 px from them), rounded.
    """
    padded = np.pad(mask.astype(np.float64), 1)            # closes the pieces that touch the border
    lines = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate).lines(0.999)
    pieces = []
    for line in lines:
        points = np.round(line[:-1]).astype(np.int64) - 1  # back to the unpadded pixel indices
        points = points[np.any(points != np.roll(points, 1, axis=0), axis=1)]
        if len(points) < 3:
            continue
        x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
        # Outer boundaries and holes run in opposite senses (shoelace > 0 for contourpy's outer ones).
        if 0.5 * (np.roll(x, 1) * y - x * np.roll(y, 1)).sum() <= 0:
            continue
        x1, y1, x2, y2 = int(x.min()), int(y.min()), int(x.max()), int(y.max())
        if mask[y1:y2 + 1, x1:x2 + 1].sum() < min_pixels:
            continue
        pieces.append((points.tolist(), [x1, y1, x2, y2]))
    return pieces


def _lerf_ovs_frame(name: str, labels: np.ndarray, layout: tuple[SceneObject, ...]) -> dict:
    """One annotated view's LERF-OVS JSON: every piece of every object (the fixed table left out), from the
    1-based ``labels`` ``[H, W]`` of ``layout``."""
    objects = []
    for k, obj in enumerate(layout, start=1):
        if not obj.movable:
            continue
        for polygon, box in outlines(labels == k):
            objects.append({"category": obj.prompt, "group_id": None, "shape_type": "polygon", "bbox": box,
                            "segmentation": polygon})
    height, width = labels.shape
    return {"info": {"name": name, "width": width, "height": height}, "objects": objects}


def _surface_points(objects: tuple[SceneObject, ...], pose: np.ndarray, directions: np.ndarray,
                    rng: np.random.Generator, count: int = 1500) -> np.ndarray:
    """``count`` random points ``[P, 3]`` where the pixel-centre rays of camera ``pose`` ``[3, 4]`` meet a surface;
    ``directions`` ``[3, H*W]``: the camera-space pixel directions."""
    world = pose[:, :3] @ directions
    t = trace(objects, pose[:, 3], world.T)[0]
    hit = np.flatnonzero(np.isfinite(t))
    chosen = rng.choice(hit, size=min(count, len(hit)), replace=False)
    return pose[:, 3] + t[chosen, None] * world[:, chosen].T


def _parameters(seed: int, width: int, height: int, views: int, annotated: int) -> dict:
    return {"generator": "laser.data.synthetic_360", "version": VERSION, "seed": seed, "width": width,
            "height": height, "views": views, "annotated": annotated}


def _frame(pose: np.ndarray) -> list[list[float]]:
    return np.concatenate([pose, [[0.0, 0.0, 0.0, 1.0]]]).tolist()


def _write_scene(folder: Path, seed: int, width: int, height: int, views: int, annotated: int) -> None:
    objects, noises = jittered(ORBIT_OBJECTS, seed)
    c2w = orbit_poses(views)
    focal = focal_length(width)
    names = [f"frame_{v + 1:05d}" for v in range(views)]
    for sub in ("images", "labels", "segmentations", "lerf_ovs"):
        (folder / sub).mkdir()
    chosen = annotated_views(views, annotated)
    seg = folder / "segmentations"
    (seg / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES_360))
    directions = camera_directions(height, width, focal, np.array([[0.5, 0.5]]))
    rng = np.random.default_rng(seed)
    points = []
    for v, name in enumerate(names):
        image, labels, _ = render_view(objects, noises, c2w[v], height, width, focal, alpha=True)
        save_png(image, folder / "images" / f"{name}.png")
        save_png(labels, folder / "labels" / f"{name}.png")
        points.append(_surface_points(objects, c2w[v], directions, rng))
        if v in chosen:
            save_masks(seg / f"{v:02d}", labels, CLASSES_360)
            frame = _lerf_ovs_frame(f"{name}.jpg", labels, ORBIT_OBJECTS)
            (folder / "lerf_ovs" / f"{name}.json").write_text(json.dumps(frame) + "\n")

    points = np.concatenate(points)
    write_ply(folder / "sparse_pc.ply", {k: points[:, n].astype(np.float32) for n, k in enumerate("xyz")},
              ["laser.data.synthetic_360: points on the visible surfaces"])
    frames = [{"file_path": f"images/{name}.png", "transform_matrix": _frame(pose)} for name, pose in zip(names, c2w)]
    nerfstudio = {"camera_model": "OPENCV", "fl_x": focal, "fl_y": focal, "cx": width / 2, "cy": height / 2,
                  "w": width, "h": height, "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
                  "ply_file_path": "sparse_pc.ply", "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(nerfstudio, indent=1) + "\n")
    angle = 2 * math.atan(width / (2 * focal))
    for split, keep in (("train", lambda v: v % HOLDOUT_EVERY != 0), ("test", lambda v: v % HOLDOUT_EVERY == 0)):
        blender = {"camera_angle_x": angle,
                   "frames": [{"file_path": f"./images/{names[v]}", "transform_matrix": _frame(c2w[v])}
                              for v in range(views) if keep(v)]}
        (folder / f"transforms_{split}.json").write_text(json.dumps(blender, indent=1) + "\n")
    info = _parameters(seed, width, height, views, annotated) | {"classes": list(CLASSES_360), "focal": focal}
    (folder / "synthetic.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def generate_360(out: str | Path, seed: int = 0, width: int = 320, height: int = 240, views: int = 40,
                 annotated: int = 5, force: bool = False) -> Path:
    """Write the 360° scene into ``out`` and return its path (written atomically, regenerated only when its
    parameters change: :func:`laser.data.synthetic.write_generated`)."""
    return write_generated(out, _parameters(seed, width, height, views, annotated), force,
                           lambda folder: _write_scene(folder, seed, width, height, views, annotated),
                           f"360°, seed {seed}, {width}x{height}, {views} views, {len(CLASSES_360)} classes")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m laser.data.synthetic_360 --out DIR [--seed N --width W --height H --views V]``."""
    parser = argparse.ArgumentParser(prog="python -m laser.data.synthetic_360", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="scene folder to write, e.g. data/synthetic_360")
    parser.add_argument("--seed", type=int, default=0, help="varies colours, positions and textures slightly")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--views", type=int, default=40)
    parser.add_argument("--annotated", type=int, default=5, help="views with segmentation masks and LERF-OVS labels")
    parser.add_argument("--force", action="store_true", help="regenerate even if the scene exists")
    args = parser.parse_args(argv)
    generate_360(args.out, seed=args.seed, width=args.width, height=args.height, views=args.views,
                 annotated=args.annotated, force=args.force)


if __name__ == "__main__":
    main()
