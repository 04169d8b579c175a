"""A trained scene on the LERF-OVS benchmark (LangSplat's protocol): localisation accuracy and mIoU per phrase.

    python -m laser.lerf_ovs run=runs/synthetic_360 labels=data/synthetic_360/lerf_ovs [out=<run>/lerf_ovs]
        [threshold=0.4] [device=auto] [cache=true]

``labels`` is a folder of ``frame_*.json`` annotations (LangSplat's ``lerf_ovs/label/<scene>/``; the synthetic 360°
scene writes its own in ``lerf_ovs/``). Each frame's phrases are queried at the run's evaluation resolution
through :class:`laser.query.SceneQuery` (views rendered once, cached) and scored as
:mod:`laser.evaluation.lerf_ovs` describes. Writes ``<out>/metrics.json`` (overall and per phrase) and
``<out>/relevancy/<view>_<phrase>.png``, and prints the overall figures as one JSON line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from laser.evaluation.lerf_ovs import MASK_THRESHOLD, lerf_ovs_metrics, read_annotations
from laser.evaluation.pictures import relevancy_map, save_png
from laser.evaluation.tables import write_atomic
from laser.query import SceneQuery, slug
from laser.tools import MISSING, parse_options, run_tool


@dataclass
class LerfOvsOptions:
    run: str = MISSING
    labels: str = MISSING          # the folder of frame_*.json annotations
    out: str | None = None         # null: <run>/lerf_ovs
    threshold: float = MASK_THRESHOLD
    device: str = "auto"
    cache: bool = True


def evaluate(options: LerfOvsOptions) -> dict:
    """The command: every annotated frame's phrases queried and scored; the metrics written and returned."""
    scene_query = SceneQuery(options.run, options.device, options.cache)
    height, width = scene_query.shape
    annotations = read_annotations(options.labels, scene_query.scene.image_paths, (width, height))
    out = Path(options.out) if options.out is not None else scene_query.run / "lerf_ovs"
    scores = {}
    for view, targets in sorted(annotations.items()):
        texts = sorted(targets)
        maps = scene_query.scores(view, texts).cpu()
        scores[view] = {phrase: maps[..., index] for index, phrase in enumerate(texts)}
        for phrase, relevancy in scores[view].items():
            save_png(out / "relevancy" / f"{view:03d}_{slug(phrase)}.png", relevancy_map(relevancy))
    metrics = lerf_ovs_metrics(annotations, scores, options.threshold)
    result = {"run": str(scene_query.run), "method": scene_query.stage.name, "labels": str(options.labels),
              "views": sorted(annotations), "resolution": [height, width], **metrics}
    write_atomic(out / "metrics.json", json.dumps(result, indent=2))
    return result


def main(argv: Sequence[str]) -> None:
    result = evaluate(parse_options(LerfOvsOptions, argv))
    print(json.dumps({k: result[k] for k in ("run", "method", "localization_accuracy", "miou", "pairs")}))


if __name__ == "__main__":
    run_tool(main)
