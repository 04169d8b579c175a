"""Seconds per training step of each method, broken down by phase: the benchmark speed changes are judged by.

    python experiments/bench_step.py                                   # every method, both settings, 1 thread
    python experiments/bench_step.py --methods laser --settings paper --steps 10
    python experiments/bench_step.py --device cuda --threads 0         # on a GPU (0: torch's default threads)
    python experiments/bench_step.py --flops                           # also the matrix products' share (CPU)

Methods: ``laser``, ``ovs3d``, ``lerf`` (stage 2, in their costliest phase: Laser with joint fine-tuning and the
cross terms on, 3D-OVS with joint fine-tuning, LERF as it always runs) and ``reconstruction`` (stage 1).

Settings:

* ``synthetic``: the CPU blocks the default synthetic scene trains with (``conf/tuning/<method>/synthetic.yaml``,
  ``reconstruction=cpu``) on its trained stage 1.
* ``paper``: the papers' per-step sizes: Laser 8 crops of 256 px (2048 rays), 3D-OVS and LERF 4096 rays, LERF's
  own hash grid and MLPs, 482 samples per ray for stage 2, 2048 rays for stage 1; the field is the synthetic
  stage 1 resized to 640^3 voxels (TensoRF's final grid; its trained alpha mask kept), on the synthetic scene
  rendered at 512x384 so that 256-px crops fit. 3D-OVS's pyramids are 8x smaller than the images, as 3D-OVS
  computes them.

Teachers are the label oracle's (their cost is in ``sampling``; the dense CLIP forward of Laser's real teacher is
``bench_clip.py``'s). ``shaded_per_ray`` counts the samples heavy enough to be given semantics in one more batch:
the stage-2 cost grows with it, and it depends on how sharp the field's surfaces are (a field resized from the CPU
grid has softer ones than a field trained at 640^3). Phases are exclusive wall-clock times of the code they wrap
(nested calls are subtracted from their callers), summed over the timed steps and divided by them: ``sampling``
(the supervision: rays and teacher targets), ``ray samples`` (sampling along the rays and the weights, density
lookups excluded), ``field lookups`` (density and appearance grids; LERF's hash grid), ``heads`` (semantic head,
colour MLP, LERF's MLPs), ``ltqa``, ``label volume`` (Laser's label volume, 3D-OVS's selector), ``adapter``,
``compositing``, ``losses``, ``backward``, ``guard`` (the non-finite check), ``optimiser`` (zero_grad and Adam) and
``other`` (the rest of the step).
``s_per_step`` is timed in a separate pass without the wrappers. On CUDA every wrapper synchronises, so the
breakdown costs time there; ``s_per_step`` does not.

``--flops`` (CPU only) times ``steps`` more steps under torch's profiler with FLOP counting: ``matmul_gflop`` per
step (the ``PRODUCTS`` calls, ``mm`` / ``addmm`` / ``bmm`` / ``baddbmm``, forward and backward), the seconds per
step those calls took (``matmul_s``) and the profiled step (``profiled_s``, slower than ``s_per_step`` by the
profiler's cost). Their ratio is the rate the products reach; the rest of the step is elementwise work, lookups,
scatters and overhead, which a cheaper step must shrink when the products already run near the machine's matmul
rate.

One JSON line per (method, setting), then a Markdown table of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PHASES = ("sampling", "ray samples", "field lookups", "heads", "ltqa", "label volume", "adapter", "compositing",
          "losses", "backward", "guard", "optimiser", "other")
PAPER_SCENE = ["scene.root=data/synthetic_512", "+scene.generate.width=512", "+scene.generate.height=384"]
PAPER = {  # the papers' per-step sizes, on the 512x384 synthetic scene
    "laser": ["model.supervision.patch_size=256", "model.supervision.patch_num=8", "model.rendering.n_samples=482",
              "model.ltqa.dim=48"],
    "ovs3d": ["model.supervision.batch_size=4096", "model.rendering.n_samples=482", "teacher.image_downsample=8",
              "model.supervision.patch_size=256"],
    "lerf": ["model.supervision.batch_size=4096", "model.rendering.n_samples=482", "model.language_field.n_levels=24",
             "model.language_field.features_per_level=8", "model.language_field.log2_hashmap_size=19",
             "model.language_field.hidden_dim=256", "model.language_field.n_hidden=4",
             "model.language_field.dino_hidden_dim=256"],
    "reconstruction": ["reconstruction.batch_size=2048", "reconstruction.max_samples=1000000"],
}
# The costliest phase from the second step on: the first step (0) is a warm-up of the earlier phase.
PHASE = {"laser": ["model.schedule.joint_start_iter=1", "model.cross_start_iter=0"],
         "ovs3d": ["model.schedule.joint_start_iter=1"], "lerf": [], "reconstruction": []}
PAPER_VOXELS = 640 ** 3
PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")   # the profiler's FLOP-counted products


class PhaseTimer:
    """Exclusive wall-clock time per label of wrapped callables: a nested wrapped call is subtracted from its
    caller's time."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[float] = []
        self.patched: list[tuple[object, str, object]] = []

    def wrap(self, label: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            self.stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                elapsed = time.perf_counter() - start
                self.totals[label] += elapsed - self.stack.pop()
                if self.stack:
                    self.stack[-1] += elapsed
        return timed

    def patch(self, owner, name: str, label: str) -> None:
        self.patched.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, self.wrap(label, getattr(owner, name)))

    def restore(self) -> None:
        """Undo every patch, the latest first (an instance attribute that was not there is deleted again)."""
        for owner, name, original in reversed(self.patched):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self.patched.clear()


def stage1_checkpoint() -> Path:
    """The default synthetic scene's published stage 1, trained here first when there is none."""
    pattern = "synthetic-reconstruction-*/checkpoint.pt"
    if not sorted((REPO / "runs" / "stages").glob(pattern)):
        subprocess.run([sys.executable, "train.py", "logger=none", "segmentation=false",
                        "hydra.run.dir=runs/bench_step_stage1"], cwd=REPO, check=True)
    return sorted((REPO / "runs" / "stages").glob(pattern))[0]


def build(method: str, setting: str, device):
    """The stage to time, on the trained synthetic stage 1 (resized to 640^3 for the paper setting)."""
    from hydra import compose, initialize_config_dir

    from laser.training import checkpoint
    from laser.training.build import build_reconstruction, build_segmentation, prepare_segmentation

    overrides = ["logger=none", *PHASE[method]]
    if method != "reconstruction":
        overrides.append(f"model={method}")
    if setting == "paper":
        overrides += [*PAPER_SCENE, *PAPER[method]]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=overrides)
    reconstruction, _ = build_reconstruction(cfg, device)
    reconstruction.load_state_dict(checkpoint.load(stage1_checkpoint())["stage"])
    if setting == "paper":
        reconstruction.field.set_resolution(PAPER_VOXELS)
        reconstruction.optimizer = reconstruction._new_optimizer()
    if method == "reconstruction":
        return reconstruction
    prepared = prepare_segmentation(cfg, reconstruction.scene)
    return build_segmentation(cfg, prepared, reconstruction.field, device)[0]


def instrument(stage, timer: PhaseTimer) -> None:
    """Wrap the phases of one step of ``stage`` (its instance and the functions its modules call by name)."""
    import torch

    import laser.methods.laser as laser_method
    import laser.methods.lerf as lerf_method
    import laser.methods.ovs3d as ovs3d_method
    import laser.methods.reconstruction as reconstruction_method
    import laser.methods.segmentation as segmentation
    import laser.modules.label_volume as label_volume
    import laser.rendering as rendering

    field = stage.field
    timer.patch(field, "density", "field lookups")
    timer.patch(field, "app_features", "field lookups")
    timer.patch(field, "color", "heads")
    for module in (laser_method, ovs3d_method, lerf_method, label_volume, rendering):
        if hasattr(module, "composite_packed"):
            timer.patch(module, "composite_packed", "compositing")
    timer.patch(rendering, "composite", "compositing")
    timer.patch(segmentation, "ray_weights", "ray samples")
    timer.patch(reconstruction_method, "render_rays", "ray samples")
    timer.patch(torch.Tensor, "backward", "backward")
    timer.patch(torch.optim.Adam, "step", "optimiser")
    timer.patch(torch.optim.Adam, "zero_grad", "optimiser")
    timer.patch(stage, "train_step", "other")
    if hasattr(stage, "supervision"):
        timer.patch(stage.supervision, "sample", "sampling")
        timer.patch(stage, "losses", "losses")
        timer.patch(stage, "guard_step", "guard")
        for name, module in stage.modules().items():
            if name == "language_field":
                timer.patch(module, "backbone", "field lookups")
                timer.patch(module, "language", "heads")
                timer.patch(module, "dino", "heads")
            else:
                label = {"head": "heads", "labels": "label volume", "selector": "label volume"}.get(name, name)
                # Renders may call a part's pieces instead of its forward (see LaserSegmentation.render).
                for piece in {"ltqa": ("forward", "mix", "mix_after"), "head": ("forward", "hidden"),
                              "labels": ("forward", "ray_distribution"),
                              "selector": ("forward", "ray_distribution")}.get(name, ("forward",)):
                    timer.patch(module, piece, label)
    else:
        timer.patch(field, "regularization", "losses")


def matmul_work(stage, steps: int, first: int) -> dict:
    """Matrix-product work of ``steps`` training steps of ``stage`` from step ``first``, under torch's profiler
    (CPU): GFLOP and seconds per step of the :data:`PRODUCTS` calls, and the whole profiled step's seconds (every
    call's own time; the profiler also counts elementwise FLOPs, which are not products and are left out)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for step in range(first, first + steps):
            stage.train_step(step)
    events = prof.key_averages()
    counted = [e for e in events if e.key in PRODUCTS]
    return {"matmul_gflop": round(sum(e.flops for e in counted) / steps / 1e9, 3),
            "matmul_s": round(sum(e.self_cpu_time_total for e in counted) / steps / 1e6, 4),
            "profiled_s": round(sum(e.self_cpu_time_total for e in events) / steps / 1e6, 4)}


def measure(method: str, setting: str, steps: int, device, flops: bool = False) -> dict:
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    stage = build(method, setting, device)
    for step in range(2):                                 # warm-up, and into the timed phase
        stage.train_step(step)
    sync()
    tic = time.perf_counter()
    for step in range(2, 2 + steps):
        stage.train_step(step)
    sync()
    seconds = (time.perf_counter() - tic) / steps
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timer = PhaseTimer(sync)
    instrument(stage, timer)
    try:
        for step in range(2 + steps, 2 + 2 * steps):
            stage.train_step(step)
    finally:
        timer.restore()
    breakdown = {phase: round(timer.totals.get(phase, 0.0) / steps, 4) for phase in PHASES}
    products = matmul_work(stage, steps, 2 + 2 * steps) if flops else {}
    return {"method": method, "setting": setting, "s_per_step": round(seconds, 4), "breakdown_s": breakdown,
            **work(stage), **products,
            "steps": steps, "threads": torch.get_num_threads(), "device": device_name(device),
            "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None,
            "torch": torch.__version__}


def work(stage) -> dict:
    """Rays and shaded points of one more training batch: what the step's cost scales with (stage 2 only; the
    number of shaded points depends on how sharp the field's surfaces are)."""
    import torch

    if not hasattr(stage, "supervision"):
        return {"rays": stage.batch_size, "shaded_per_ray": None}
    with torch.no_grad():
        shaded = stage.shaded_samples(stage.supervision.sample(stage.teacher)["rays"], train=True)["shaded"]
    return {"rays": shaded.shape[0], "shaded_per_ray": round(float(shaded.sum(1).float().mean()), 1)}


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="laser,ovs3d,lerf,reconstruction")
    parser.add_argument("--settings", default="synthetic,paper")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after two warm-up steps)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0: torch's default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--flops", action="store_true", help="also the matrix products' GFLOP and seconds (CPU)")
    args = parser.parse_args()

    import laser  # noqa: F401  (before torchvision)
    import torch

    from laser.training.run import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.flops and device.type != "cpu":
        parser.error("--flops counts the products' CPU time: run it with --device cpu")
    rows = []
    for setting in args.settings.split(","):
        for method in args.methods.split(","):
            torch.manual_seed(0)
            rows.append(measure(method, setting, args.steps, device, args.flops))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| method | setting | rays | shaded / ray | s / step | " + " | ".join(PHASES) + " |")
    print("|---" * (len(PHASES) + 5) + "|")
    for row in rows:
        print(f"| {row['method']} | {row['setting']} | {row['rays']} | {row['shaded_per_ray']} | "
              f"{row['s_per_step']:.3f} | " + " | ".join(f"{row['breakdown_s'][p]:.3f}" for p in PHASES) + " |")


if __name__ == "__main__":
    main()
