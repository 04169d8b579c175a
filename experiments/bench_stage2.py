"""Time per Laser stage-2 iteration at the paper's settings: 8 crops of 256 px (2048 rays), 482 samples per ray,
4096-ray LTQA chunks, d = 48.

    python experiments/bench_stage2.py                       # CPU, or the GPU when there is one
    python experiments/bench_stage2.py --steps 20 --device cuda

The field is the stage-1 result of the default synthetic scene (trained here first when ``runs/stages`` has none);
the crops come from the same scene rendered at 512x384 (the geometry is resolution-independent), since 256-px crops
do not fit its 320x240 images. The teacher is the label oracle, whose cost is negligible: the dense CLIP forward
of Laser's teacher is measured separately by ``bench_clip.py`` and adds to these figures. Three phases are timed,
as their costs differ: semantic modules only, joint appearance fine-tuning, and the adapter on NeRF features
(cross terms).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package


def stage1_checkpoint() -> Path:
    found = sorted((REPO / "runs" / "stages").glob("synthetic-reconstruction-*/checkpoint.pt"))
    if not found:
        subprocess.run([sys.executable, "train.py", "logger=none", "segmentation=false",
                        "hydra.run.dir=runs/bench_stage2_stage1"], cwd=REPO, check=True)
        found = sorted((REPO / "runs" / "stages").glob("synthetic-reconstruction-*/checkpoint.pt"))
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per phase (after one warm-up step)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import torch
    from hydra import compose, initialize_config_dir

    from laser.training import checkpoint
    from laser.training.build import build_reconstruction, build_segmentation, prepare_segmentation
    from laser.training.run import resolve_device

    device = resolve_device(args.device)
    path = stage1_checkpoint()
    per_phase = args.steps + 1
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=[
            "logger=none", "scene.root=data/synthetic_512", "+scene.generate.width=512", "+scene.generate.height=384",
            "model.supervision.patch_size=256", "model.supervision.patch_num=8", "model.rendering.n_samples=482",
            "model.ltqa.dim=48", f"model.schedule.n_iters={3 * per_phase}",
            f"model.schedule.joint_start_iter={per_phase}", f"model.cross_start_iter={2 * per_phase - 1}"])
    reconstruction, _ = build_reconstruction(cfg, device)
    reconstruction.load_state_dict(checkpoint.load(path)["stage"])
    prepared = prepare_segmentation(cfg, reconstruction.scene)
    stage, _ = build_segmentation(cfg, prepared, reconstruction.field, device)

    phases = {}
    for phase in ("semantic_only", "joint", "joint_cross"):
        times = []
        for index in range(per_phase):
            step = len(phases) * per_phase + index
            if device.type == "cuda":
                torch.cuda.synchronize()
            tic = time.perf_counter()
            stage.train_step(step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - tic)
        phases[phase] = round(sum(times[1:]) / args.steps, 3)           # the first step of a phase warms up
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(json.dumps({"s_per_step": phases, "rays_per_step": 8 * 16 * 16, "n_samples": 482, "device": name,
                      "threads": torch.get_num_threads(), "cuda_peak_mb": peak, "stage1": str(path.relative_to(REPO)),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
