"""A trained scene as a point cloud: colour, class and each phrase's relevancy per point, as PLY.

    python -m laser.export run=runs/synthetic out=scene.ply [text='["red apple", "mug"]'] [per_class=true]
        [views=all] [stride=4] [min_opacity=0.5] [device=auto]

Points are where the density field puts each ray's mass: one per pixel of every ``stride``-th pixel of the chosen
views (default: all of them), at the ray's expected depth, kept where its opacity reaches ``min_opacity`` (as
nerfstudio's point-cloud export, from the training cameras). Their colour, class (the argmax over the scene's
classes) and relevancies are those of the rendered pixels, so the cloud shows exactly what the 2D queries
(:mod:`laser.query`) show. Coordinates are world coordinates (the NDC warp of forward-facing scenes is undone).

Vertex properties: ``x y z`` (float), ``red green blue`` (uchar), ``class`` (int, an index into the scene's sorted
class prompts, listed in the file's comments), ``score_<class>`` for every class and ``relevancy_<phrase>`` for every
phrase of ``text`` (float: the method's score; cosine for Laser and 3D-OVS, LERF's relevancy). Written with
``plyfile``, binary little-endian: Open3D, MeshLab and CloudCompare read it. ``per_class=true`` also writes one
cloud per class that has points, ``<out stem>_<class>.ply``. Every file is written under a temporary name, then renamed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from laser.data.ply import write_ply
from laser.evaluation.pictures import to_uint8
from laser.query import SceneQuery, slug
from laser.tools import MISSING, parse_options, phrases, run_tool


@dataclass
class ExportOptions:
    run: str = MISSING
    out: str = MISSING
    text: Any = None               # phrases whose relevancy each point carries; null: none beyond the classes
    per_class: bool = False        # also one cloud per class
    views: Any = "all"             # views whose rays place the points: all, or a list of indices
    stride: int = 4                # every stride-th pixel of each axis
    min_opacity: float = 0.5       # rays whose accumulated opacity is lower place no point (sky, holes)
    device: str = "auto"


def surface_points(scene_query: SceneQuery, view: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World points ``[h * w, 3]`` at the expected depth of each ray of the view (at the query's stride) and the
    rays' opacity ``[h * w]`` (:meth:`~laser.query.SceneQuery.surface`)."""
    return scene_query.surface(scene_query.stage.eval_rays(view, scene_query.stride).reshape(-1, 6))


def property_names(names: Sequence[str], prefix: str) -> list[str]:
    """PLY property names for phrases: ``<prefix>_<slug>``, made unique."""
    out: list[str] = []
    for name in names:
        base = candidate = f"{prefix}_{slug(name)}"
        number = 2
        while candidate in out:
            candidate, number = f"{base}_{number}", number + 1
        out.append(candidate)
    return out


def export(options: ExportOptions) -> dict:
    scene_query = SceneQuery(options.run, options.device, stride=options.stride)
    classes = list(scene_query.classes)
    texts = phrases(options.text) if options.text is not None else []
    embeddings = scene_query.embed([*classes, *texts])
    points, colours, scores = [], [], []
    for view in tqdm(scene_query.views(options.views), desc="exporting", unit="view"):
        xyz, opacity = surface_points(scene_query, view)
        keep = opacity >= options.min_opacity
        rendered = scene_query.rendered(view)
        points.append(xyz[keep])
        colours.append(rendered["rgb"].cpu()[keep])
        scores.append(scene_query.stage.query_scores(rendered, embeddings).cpu()[keep])
    xyz, rgb, score = torch.cat(points).numpy(), to_uint8(torch.cat(colours)), torch.cat(scores).numpy()
    labels = score[:, :len(classes)].argmax(axis=1).astype(np.int32)
    columns = {"x": xyz[:, 0].astype(np.float32), "y": xyz[:, 1].astype(np.float32),
               "z": xyz[:, 2].astype(np.float32)}
    for channel, name in enumerate(("red", "green", "blue")):
        columns[name] = rgb[:, channel]
    columns["class"] = labels
    for index, name in enumerate(property_names(classes, "score") + property_names(texts, "relevancy")):
        columns[name] = score[:, index].astype(np.float32)
    comments = [f"laser export of {scene_query.run} ({scene_query.stage.name})",
                *(f"class {i} = {name}" for i, name in enumerate(classes)),
                *(f"phrase {name} = {text}" for name, text in zip(property_names(texts, "relevancy"), texts))]
    out = Path(options.out)
    write_ply(out, columns, comments)
    written = {"all": str(out)}
    if options.per_class:
        for index, name in enumerate(classes):
            chosen = labels == index
            if not chosen.any():                       # no empty files: points_per_class says it has none
                continue
            path = out.with_name(f"{out.stem}_{slug(name)}{out.suffix}")
            write_ply(path, {k: v[chosen] for k, v in columns.items()}, [*comments, f"only class {index} = {name}"])
            written[name] = str(path)
    return {"run": str(scene_query.run), "points": int(len(labels)), "files": written,
            "points_per_class": {name: int((labels == i).sum()) for i, name in enumerate(classes)}}


def main(argv: Sequence[str]) -> None:
    print(json.dumps(export(parse_options(ExportOptions, argv))))


if __name__ == "__main__":
    run_tool(main)
