"""Wall-clock of each phase of the README's main command: stage building, training and evaluation of both stages.

    .venv/bin/python experiments/profile_main.py RUN_DIR [override ...]     # e.g. /tmp/profile_main

Runs :func:`laser.training.loop.train` on ``train.py``'s defaults (``logger=none stage_store=null`` and the
overrides) with the loop's calls wrapped in timers, then prints the run's result and the seconds per phase, one JSON
line each (the training seconds are the run's own ``stage1_train_s`` / ``stage2_train_s``). Issue 14's 5-minute
target is judged on the whole command (``/usr/bin/time python train.py``); this says where its time goes.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing the package

import laser  # noqa: E402,F401  (before open_clip)
import laser.training.loop as loop  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from laser.methods.reconstruction import Reconstruction  # noqa: E402
from laser.methods.segmentation import SegmentationStage  # noqa: E402

SECONDS: dict[str, float] = {}


def timed(function, label: str):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        tic = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            SECONDS[label] = SECONDS.get(label, 0.0) + time.perf_counter() - tic
    return wrapper


def main() -> None:
    for name in ("build_reconstruction", "prepare_segmentation", "build_segmentation", "save"):
        setattr(loop, name, timed(getattr(loop, name), name))
    Reconstruction.evaluate = timed(Reconstruction.evaluate, "stage1 evaluate")
    SegmentationStage.evaluate = timed(SegmentationStage.evaluate, "stage2 evaluate")
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        cfg = compose("train", overrides=["logger=none", "stage_store=null", *sys.argv[2:]])
    tic = time.perf_counter()
    result = loop.train(cfg, sys.argv[1])
    total = time.perf_counter() - tic
    print(json.dumps(result))
    print(json.dumps({k: round(v, 1) for k, v in SECONDS.items()} | {"total": round(total, 1)}))


if __name__ == "__main__":
    main()
