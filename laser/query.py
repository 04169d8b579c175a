"""Ask a trained scene about any phrase: relevancy maps and a segmentation per view, in milliseconds per phrase.

    python -m laser.query run=runs/synthetic text='["red apple", "something to drink from"]' [views=[0,3]]
        [out=<run>/query] [threshold=null] [stride=1] [device=auto] [cache=true]

A view's phrase-independent quantities (:meth:`~laser.methods.segmentation.SegmentationStage.query_render`: the
unit features of Laser and 3D-OVS, LERF's composited last hidden layer per scale) are rendered once and cached in
``<run>/query_cache/<method>/``, written atomically and keyed by the checkpoints they came from, so a re-trained
run never serves stale features. A phrase then costs its text embedding and a product with the cached view
(:meth:`~laser.methods.segmentation.SegmentationStage.query_scores`). The phrases are embedded by the run's own CLIP
text encoder, as its classes were; Laser queries with the plain prompt, as its evaluation (LASER.md §10: the
repeated prompts of the text augmentation are a training loss only).

Writes ``<out>/relevancy/<view>_<phrase>.png`` (each map colour-mapped over its own range),
``<out>/segmentation_<view>.png`` (each pixel the phrase of highest score; with ``threshold``, pixels whose
normalised relevancy is below it keep the plain render) and ``<out>/query.json``, and prints the same as one JSON
line: the milliseconds per view of the first phrase (which renders or loads the view) and of the later ones.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from laser.errors import ConfigError
from laser.evaluation.metrics import normalized_relevancy
from laser.evaluation.pictures import class_palette, legend, relevancy_map, save_png, segmentation_overlay, with_legend
from laser.evaluation.tables import write_atomic
from laser.tools import MISSING, parse_options, phrases, run_tool
from laser.training.checkpoint import atomic_save
from laser.training.run import resolve_device
from laser.training.trained import load_trained

CACHE_LAYOUT = 1     # of the files in query_cache/: a new layout re-renders instead of misreading


class SceneQuery:
    """A trained run's stage 2, asked about any phrase at its evaluation views.

    Args:
        run: the run folder (``.hydra/config.yaml`` and ``checkpoints/``).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``...
        cache: keep each view's render in ``<run>/query_cache/`` (False: in memory only).
        stride: render every ``stride``-th pixel of each axis (1: the evaluation resolution).
    """

    def __init__(self, run: str | Path, device: str | torch.device = "auto", cache: bool = True, stride: int = 1):
        if stride < 1:
            raise ConfigError("stride", f"must be at least 1, not {stride}")
        self.run = Path(run)
        self.device = resolve_device(device) if isinstance(device, str) else device
        trained = load_trained(self.run, self.device, require_segmentation=True)
        self.trained, self.stage, self.encoder = trained, trained.segmentation, trained.prepared.encoder
        self.scene, self.stride = self.stage.eval_scene, stride
        self.cache_dir = self.run / "query_cache" / self.stage.name if cache else None
        self.fingerprint = self._fingerprint()
        self._rendered: dict[int, dict[str, Tensor]] = {}
        self.render_seconds: dict[int, float] = {}      # view -> seconds of its render or cache load

    @property
    def classes(self) -> list[str]:
        return self.scene.classes

    def _fingerprint(self) -> str:
        """What a cached view depends on: the checkpoints (size and modification time: a resumed or re-trained run
        rewrites them), the method's config and the stride."""
        stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in self.trained.checkpoints]
        model = OmegaConf.to_container(self.trained.cfg.model, resolve=True)
        text = json.dumps({"layout": CACHE_LAYOUT, "checkpoints": stats, "model": model, "stride": self.stride},
                          sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()

    def views(self, spec: Any = None) -> list[int]:
        """Views to query: ``None`` the annotated views (else the test views), ``"all"`` every view, or a list."""
        if spec is None:
            return self.scene.annotated_views or list(self.scene.test_views)
        if spec == "all":
            return list(range(self.scene.num_views))
        chosen = [int(v) for v in (spec if isinstance(spec, (list, tuple)) or OmegaConf.is_list(spec) else [spec])]
        bad = [v for v in chosen if not 0 <= v < self.scene.num_views]
        if bad or not chosen:
            raise ConfigError("views", f"view {bad[0] if bad else '(none)'} is not among this scene's "
                                       f"{self.scene.num_views} views (0-{self.scene.num_views - 1})")
        return chosen

    def embed(self, text: Sequence[str]) -> Tensor:
        """Unit text embeddings ``[Q, D]`` of phrases (memoised)."""
        return self.encoder(phrases(text)).to(self.device)

    def rendered(self, view: int) -> dict[str, Tensor]:
        """The view's phrase-independent render (each entry ``[h * w, ...]``): from memory, else from the cache
        file when its fingerprint matches, else rendered now and cached."""
        if view in self._rendered:
            return self._rendered[view]
        start = time.perf_counter()
        path = self.cache_dir / f"view_{view:03d}_stride{self.stride}.pt" if self.cache_dir is not None else None
        cached = _read_cache(path, self.fingerprint) if path is not None else None
        if cached is None:
            rays = self.stage.eval_rays(view, self.stride)
            cached = {k: v.contiguous() for k, v in self.stage.render_view(rays).items()}
            if path is not None:
                atomic_save({"fingerprint": self.fingerprint, "view": view,
                             "rendered": {k: v.cpu() for k, v in cached.items()}}, path)
        cached = {k: v.to(self.device) for k, v in cached.items()}
        _synchronize(self.device)
        self.render_seconds[view] = time.perf_counter() - start
        self._rendered[view] = cached
        return cached

    @property
    def shape(self) -> tuple[int, int]:
        """``(h, w)`` of a queried view at this stride."""
        return len(range(0, self.scene.height, self.stride)), len(range(0, self.scene.width, self.stride))

    @torch.no_grad()
    def scores(self, view: int, text: Sequence[str]) -> Tensor:
        """Scores ``[h, w, Q]`` of each phrase at each pixel of the view (the method's: cosine for Laser and
        3D-OVS, relevancy for LERF); higher is more relevant."""
        embeddings = self.embed(text)
        return self.stage.query_scores(self.rendered(view), embeddings).reshape(*self.shape, len(embeddings))

    @torch.no_grad()
    def surface(self, rays: Tensor) -> tuple[Tensor, Tensor]:
        """World points ``[R, 3]`` at the expected depth of rays ``[R, 6]`` (the NDC warp undone) and the rays'
        opacity ``[R]``, from the frozen density alone, on the CPU; ``rendering.chunk`` rays at a time."""
        stage = self.stage
        points, opacity = [], []
        for block in rays.to(stage.device).split(stage.rendering.chunk):
            samples = stage.shaded_samples(block, train=False)
            acc = samples["weights"].sum(-1)
            t = (samples["weights"] * samples["t"]).sum(-1) / acc.clamp(min=1e-10)
            points.append(self.scene.world_points(block[:, :3] + block[:, 3:] * t[:, None]).cpu())
            opacity.append(acc.cpu())
        return torch.cat(points), torch.cat(opacity)

    def focus_depth(self, c2w: Tensor) -> float:
        """Median depth, along the camera's axis in world units, of what the field renders (opacity above 0.5) at
        the central quarter of the view from ``c2w`` ``[3, 4]``: where a spiral path or the viewer's orbit looks.
        1 when nothing is rendered there."""
        scene = self.scene
        rays = scene.camera_rays(c2w, max(8, scene.height // 8), max(8, scene.width // 8))
        h, w = rays.shape[:2]
        points, opacity = self.surface(rays[h // 4: h - h // 4, w // 4: w - w // 4].reshape(-1, 6))
        depth = (c2w[:, 3] - points) @ c2w[:, 2]                          # along the camera's back axis
        opaque = opacity > 0.5
        return float(depth[opaque].median()) if opaque.any() else 1.0

    def rgb(self, view: int) -> Tensor:
        """The view's colour render ``[h, w, 3]``."""
        return self.rendered(view)["rgb"].reshape(*self.shape, 3)


def segmentation(scores: Tensor, threshold: float | None = None) -> Tensor:
    """``[h, w]`` phrase index of highest score per pixel, -1 where ``threshold`` is given and that phrase's
    normalised relevancy (:func:`~laser.evaluation.metrics.normalized_relevancy`) is below it."""
    labels = scores.argmax(dim=-1)
    if threshold is None:
        return labels
    level = normalized_relevancy(scores).gather(-1, labels[..., None])[..., 0]
    return torch.where(level >= threshold, labels, torch.full_like(labels, -1))


def _read_cache(path: Path, fingerprint: str) -> dict[str, Tensor] | None:
    """A cached view, or None when absent, unreadable or of other checkpoints (it is then rendered again)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:          # a torn or foreign file is re-rendered, never trusted
        return None
    return saved["rendered"] if saved.get("fingerprint") == fingerprint else None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def slug(phrase: str) -> str:
    """A file-name form of a phrase: lower case, runs of other characters as one '_'."""
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")[:60] or "phrase"


@dataclass
class QueryOptions:
    run: str = MISSING
    text: Any = MISSING            # a list of phrases, or one string of phrases separated by ';'
    views: Any = None              # null: the annotated views (else the test views); "all"; or a list of indices
    out: str | None = None         # null: <run>/query
    threshold: float | None = None  # normalised relevancy below which a pixel gets no phrase in the segmentation
    stride: int = 1
    device: str = "auto"
    cache: bool = True


def query(options: QueryOptions) -> dict:
    """The command: every phrase at every view, pictures written, timings returned."""
    texts = phrases(options.text)
    scene_query = SceneQuery(options.run, options.device, options.cache, options.stride)
    views = scene_query.views(options.views)
    out = Path(options.out) if options.out is not None else scene_query.run / "query"
    seconds: dict[int, list[float]] = {v: [] for v in views}
    text_seconds = []
    maps: dict[int, list[Tensor]] = {v: [] for v in views}
    for phrase in texts:                               # one phrase at a time: the first and the later ones are timed
        start = time.perf_counter()
        scene_query.embed([phrase])
        text_seconds.append(time.perf_counter() - start)
        for view in views:
            start = time.perf_counter()
            score = scene_query.scores(view, [phrase])
            _synchronize(scene_query.device)
            seconds[view].append(time.perf_counter() - start)
            maps[view].append(score[..., 0].cpu())
    start = time.perf_counter()
    palette = class_palette(len(texts))
    key = legend(texts, palette)
    for view in views:
        scores = torch.stack(maps[view], dim=-1)
        for index, phrase in enumerate(texts):
            save_png(out / "relevancy" / f"{view:03d}_{slug(phrase)}.png", relevancy_map(scores[..., index]))
        labels = segmentation(scores, options.threshold)
        save_png(out / f"segmentation_{view:03d}.png",
                 with_legend(segmentation_overlay(scene_query.rgb(view).cpu(), labels, palette), key))
    write_seconds = time.perf_counter() - start
    later = [s for v in views for s in seconds[v][1:]]
    result = {"run": str(scene_query.run), "method": scene_query.stage.name, "phrases": texts, "views": views,
              "resolution": list(scene_query.shape),
              "ms_per_view": {"first": 1000 * sum(seconds[v][0] for v in views) / len(views),
                              "later": 1000 * sum(later) / len(later) if later else None},
              "render_ms_per_view": 1000 * sum(scene_query.render_seconds[v] for v in views) / len(views),
              "text_ms_per_phrase": 1000 * sum(text_seconds) / len(texts),
              "write_ms": 1000 * write_seconds, "out": str(out)}
    write_atomic(out / "query.json", json.dumps(result, indent=2))
    return result


def main(argv: Sequence[str]) -> None:
    print(json.dumps(query(parse_options(QueryOptions, argv))))


if __name__ == "__main__":
    run_tool(main)
