"""Stage-1 reconstruction benchmark: one JSON line per scene with steps, wall seconds, peak memory and the PSNR /
SSIM of held-out views.

    python experiments/bench_recon.py                                   # synthetic + fern, CPU profiles
    python experiments/bench_recon.py --scenes fern --set reconstruction=paper scene.downsample.reconstruction=0.5

Each scene runs in its own process, so peak memory is that scene's. Budgets per scene (the targets of issue 2 on a
2-core CPU: synthetic >= 28 dB in <= 5 min, fern >= 22 dB in <= 15 min) are the overrides in ``PROFILES``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROFILES = {
    "synthetic": [],
    "fern": ["reconstruction.n_iters=1400"],
}


def run_one(scene: str, overrides: list[str]) -> dict:
    sys.path.insert(0, str(REPO))
    import torch
    from hydra import compose, initialize_config_dir

    from laser.training.build import build_reconstruction
    from laser.training.loop import fit
    from laser.training.run import setup_run

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=[f"scene={scene}", "logger=none", "resume=false",
                                          "checkpoint_every=1000000", *overrides])
    with tempfile.TemporaryDirectory() as run_dir:
        run = setup_run(cfg, run_dir)
        start = time.perf_counter()
        stage, identity = build_reconstruction(cfg, run.device)
        setup = time.perf_counter() - start
        step_fn, train_time = stage.evaluate, {}

        def timed_evaluate(out_dir, extra=None):        # split training from the final test render
            train_time["s"] = time.perf_counter() - start - setup
            return step_fn(out_dir, extra)
        stage.evaluate = timed_evaluate
        metrics = fit(stage, run, cfg, identity, "stage1")
        total = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"scene": scene, "steps": stage.n_iters, "setup_s": round(setup, 1), "train_s": round(train_time["s"], 1),
            "eval_s": round(total - setup - train_time["s"], 1), "peak_mem_mb": round(peak),
            "memory": "cuda allocated" if torch.cuda.is_available() else "process max RSS",
            "test_views": stage.scene.test_views, "psnr": round(metrics["test_psnr"], 2),
            "ssim": round(metrics["test_ssim"], 4), "device": str(run.device),
            "grid": stage.field.grid_resolution(), "samples_per_ray": stage.n_samples,
            "overrides": overrides, "machine": f"{platform.processor() or platform.machine()}, "
                                               f"{torch.get_num_threads()} threads"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", default=list(PROFILES))
    parser.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides for every scene")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_one(args.scenes[0], args.set)), flush=True)
        return
    for scene in args.scenes:
        command = [sys.executable, __file__, "--worker", "--scenes", scene, "--set", *PROFILES.get(scene, []),
                   *args.set]
        out = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if out.returncode != 0:
            print(json.dumps({"scene": scene, "error": out.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
