"""Milliseconds per view of a query (issue 12's targets): the first render of a view, and every later phrase.

    python experiments/bench_query.py                       # laser, ovs3d, lerf on the synthetic scene, 1 thread
    python experiments/bench_query.py --methods lerf --phrases 50 --threads 0      # 0: torch's default threads

Each method is trained once on the default synthetic scene into ``--runs/<method>`` (stage 1 from the store,
stage 2 for ``--steps`` steps of its CPU block: a query's cost does not depend on how long stage 2 trained), unless
that folder already holds a trained run. Then, for each method, at the evaluation resolution (320x240), over the
annotated views:

* ``render_ms``: the first render of a view (:meth:`~laser.methods.segmentation.SegmentationStage.query_render`,
  cache off);
* ``load_ms``: the same view read back from ``query_cache/`` by a new :class:`~laser.query.SceneQuery`;
* ``phrase_ms``: a new phrase on an already rendered view (:meth:`~laser.query.SceneQuery.scores`; its text
  embedding, taken once per phrase, is excluded and given as ``text_ms``: the tiny CLIP's, not ViT-B/16's), mean
  and max over ``--phrases`` phrases and the views; the targets are 50 ms (Laser) and 2 s (LERF).

One JSON line per method, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import laser  # noqa: E402,F401  (torchvision on CPU torch)
import torch  # noqa: E402

from laser.query import SceneQuery  # noqa: E402

PHRASES = ("red apple", "something to drink from", "a blue book", "the wall", "a plant in a pot", "wooden table",
           "shiny metal", "a toy", "a green cup", "the floor", "paper", "a snack", "glass", "a pen", "a lamp",
           "fruit", "a red mug", "the shadow", "white", "a box")


def ensure_run(method: str, runs: Path, steps: int, python: str) -> Path:
    """A trained run of ``method`` on the synthetic scene (trained now unless one is there)."""
    run = runs / method
    if (run / "checkpoints" / f"{method}.pt").is_file():
        return run
    command = [python, "train.py", "scene=synthetic", f"model={method}", "logger=none",
               f"model.schedule.n_iters={steps}", f"hydra.run.dir={run}"]
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return run


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, 1000 * (time.perf_counter() - start)


def bench(run: Path, phrases: int) -> dict:
    fresh = SceneQuery(run, device="cpu", cache=False)
    views = fresh.views()
    render_ms = [timed(lambda v=v: fresh.rendered(v))[1] for v in views]
    writer = SceneQuery(run, device="cpu")
    for view in views:                                               # writes the cache files
        writer.rendered(view)
    reader = SceneQuery(run, device="cpu")
    load_ms = [timed(lambda v=v: reader.rendered(v))[1] for v in views]
    texts = [PHRASES[i % len(PHRASES)] + ("" if i < len(PHRASES) else f" {i}") for i in range(phrases)]
    text_ms = [timed(lambda t=t: reader.embed([t]))[1] for t in texts]
    phrase_ms = [timed(lambda v=v, t=t: reader.scores(v, [t]))[1] for t in texts for v in views]
    return {"method": fresh.stage.name, "resolution": "x".join(map(str, fresh.shape[::-1])), "views": len(views),
            "render_ms": round(sum(render_ms) / len(views), 1), "load_ms": round(sum(load_ms) / len(views), 1),
            "phrase_ms": round(sum(phrase_ms) / len(phrase_ms), 2), "phrase_ms_max": round(max(phrase_ms), 2),
            "text_ms": round(sum(text_ms) / len(texts), 2),
            "cache_mb_per_view": round(sum(p.stat().st_size for p in (run / "query_cache").rglob("*.pt"))
                                       / 2**20 / len(views), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="laser,ovs3d,lerf")
    parser.add_argument("--runs", type=Path, default=REPO / "multirun" / "bench_query")
    parser.add_argument("--steps", type=int, default=20, help="stage-2 steps of a run trained for the benchmark")
    parser.add_argument("--phrases", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for method in args.methods.split(","):
        run = ensure_run(method, args.runs, args.steps, sys.executable)
        for cache in (run / "query_cache").rglob("*.pt"):             # the first render is timed, not a cache hit
            cache.unlink()
        rows.append(bench(run, args.phrases))
        print(json.dumps(rows[-1]), flush=True)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
