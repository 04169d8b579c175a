"""A video of a trained scene: RGB | segmentation | relevancy side by side along a camera path, as mp4.

    python -m laser.video run=runs/synthetic [text='["red apple", "mug"]'] [relevancy="red apple"]
        [path=auto|spiral|orbit] [frames=120] [fps=30] [scale=0.5] [out=<run>/video.mp4] [device=auto]

The path is a spiral in front of a forward-facing scene (NDC rays; LLFF's, focused at the median depth the field
renders from the average camera) and an orbit round a 360° one (``laser.data.camera_paths``). The segmentation
panel gives each pixel the phrase of highest score among ``text`` (default: the scene's classes), with a legend;
the relevancy panel shows the scores of ``relevancy`` (default: the first phrase) over one colour range for the
whole video, so that brightness means the same in every frame. Frames are rendered at ``scale`` times the evaluation
resolution. Writing mp4 needs the ``video`` extra (``pip install -e ".[video]"``: imageio's ffmpeg); the file is
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from laser.data.camera_paths import orbit_path, spiral_path
from laser.data.rays import average_pose
from laser.errors import ConfigError
from laser.evaluation.pictures import (class_palette, legend, relevancy_map, segmentation_overlay, to_uint8,
                                      with_legend)
from laser.query import SceneQuery
from laser.tools import MISSING, parse_options, phrases, run_tool


@dataclass
class VideoOptions:
    run: str = MISSING
    text: Any = None               # phrases of the segmentation panel; null: the scene's classes
    relevancy: str | None = None   # the phrase of the relevancy panel; null: the first of text
    path: str = "auto"             # auto (spiral for forward-facing scenes, orbit for 360° ones) | spiral | orbit
    frames: int = 120
    fps: int = 30
    scale: float = 0.5             # frame size relative to the evaluation views
    out: str | None = None         # null: <run>/video.mp4
    device: str = "auto"


def path_kind(scene, kind: str) -> str:
    """``kind``, with ``auto`` resolved by the scene's ray space: a spiral for NDC (forward-facing), else an orbit."""
    return ("spiral" if scene.ndc else "orbit") if kind == "auto" else kind


def camera_path(scene_query: SceneQuery, kind: str, frames: int) -> torch.Tensor:
    """``[frames, 3, 4]`` poses of the path ``kind`` (auto: :func:`path_kind`) round the training cameras."""
    scene = scene_query.scene
    kind = path_kind(scene, kind)
    poses = scene.c2w[scene.train_views]
    if kind == "spiral":
        average = torch.from_numpy(average_pose(poses.double().numpy())).float()
        return spiral_path(poses, scene_query.focus_depth(average), frames)
    if kind == "orbit":
        target = scene.world_points(scene.aabb.mean(dim=0))
        return orbit_path(poses, target, frames)
    raise ConfigError("path", f"must be auto, spiral or orbit, not {kind!r}")


def even(image: np.ndarray) -> np.ndarray:
    """Pad to even height and width with white: H.264 in yuv420p needs both even."""
    pad = ((0, image.shape[0] % 2), (0, image.shape[1] % 2), (0, 0))
    return np.pad(image, pad, constant_values=255)


def video(options: VideoOptions) -> dict:
    if options.frames < 1 or options.fps < 1 or options.scale <= 0:
        raise ConfigError("frames", f"need frames >= 1, fps >= 1 and scale > 0; got {options.frames}, {options.fps}, "
                                    f"{options.scale}")
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (what writes mp4)
    except ImportError:
        raise ConfigError("out", "writing mp4 needs imageio's ffmpeg plugin: pip install -e \".[video]\" "
                                 "(or pip install 'imageio[ffmpeg]')") from None
    scene_query = SceneQuery(options.run, options.device, cache=False)
    stage, scene = scene_query.stage, scene_query.scene
    texts = phrases(options.text) if options.text is not None else list(scene_query.classes)
    highlighted = phrases(options.relevancy)[0] if options.relevancy is not None else texts[0]
    embeddings = scene_query.embed([*texts, highlighted])
    poses = camera_path(scene_query, options.path, options.frames)
    size = max(1, round(scene.height * options.scale)), max(1, round(scene.width * options.scale))
    rendered = []
    for pose in tqdm(poses, desc="rendering", unit="frame"):
        rays = scene.camera_rays(pose, *size).to(stage.device)
        out = stage.render_view(rays)
        scores = stage.query_scores(out, embeddings).reshape(*rays.shape[:2], -1).cpu()
        rendered.append((out["rgb"].reshape(*rays.shape[:2], 3).cpu(), scores))
    relevancies = torch.stack([scores[..., -1] for _, scores in rendered])
    value_range = (float(relevancies.min()), float(relevancies.max()))
    palette = class_palette(len(texts))
    key = legend(texts, palette)
    out = Path(options.out) if options.out is not None else scene_query.run / "video.mp4"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    with imageio.get_writer(partial, fps=options.fps, codec="libx264", macro_block_size=1) as writer:
        for rgb, scores in tqdm(rendered, desc="writing", unit="frame"):
            panels = [to_uint8(rgb), segmentation_overlay(rgb, scores[..., :-1].argmax(-1), palette),
                      relevancy_map(scores[..., -1], value_range=value_range)]
            writer.append_data(even(with_legend(np.concatenate(panels, axis=1), key)))
    os.replace(partial, out)
    return {"run": str(scene_query.run), "out": str(out), "frames": len(poses), "fps": options.fps,
            "path": path_kind(scene, options.path),
            "phrases": texts, "relevancy": highlighted, "frame_size": list(rendered[0][0].shape[:2])}


def main(argv: Sequence[str]) -> None:
    print(json.dumps(video(parse_options(VideoOptions, argv))))


if __name__ == "__main__":
    run_tool(main)
