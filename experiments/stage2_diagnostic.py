"""Stage-2 diagnostic: train a stage 2 from a trained stage 1 and evaluate it quickly at chosen steps.

The run is built and stepped as ``train.py`` does (same config, same overrides, any ``model=``); stage 1 is loaded
from a checkpoint (``runs/stages/...`` after any ``train.py`` run on the scene). At each requested step the
annotated views are scored at every ``--every``-th pixel (the stage's own ``class_scores``) with the 3D-OVS
metrics (LASER.md §11); per-class IoU is printed beside the teacher's own (its full-image tokens,
nearest-upsampled, at the same pixels). With the adapter on, the adapter statistics that show the
cross-training collapse are printed too (experiments/RESULTS.md): norms of the centred input ``c0`` and of the
adapted branch ``c' - 0.8 c0``, and cosines between CLIP and NeRF outputs.

Prints one JSON line per evaluation. Times are stage-2 training seconds (evaluations excluded).

Run: ``.venv/bin/python experiments/stage2_diagnostic.py --stage1 runs/stages/<folder>/checkpoint.pt
--steps 1000,3000 [override ...]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing the package

import laser  # noqa: E402,F401  (before open_clip)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from laser.evaluation.metrics import segmentation_metrics  # noqa: E402
from laser.training import checkpoint  # noqa: E402
from laser.training.build import build_reconstruction, build_segmentation, prepare_segmentation  # noqa: E402
from laser.training.loop import read_figures  # noqa: E402
from laser.training.run import resolve_device, seed_everything  # noqa: E402


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float(F.cosine_similarity(a, b, dim=-1).mean()), 3)


def _norm(a: torch.Tensor) -> float:
    return round(float(a.norm(dim=-1).mean()), 2)


@torch.no_grad()
def adapter_statistics(stage, step: int) -> dict:
    """One fresh training batch through the stage's own step path (its supervision and ``outputs``), in eval mode:
    the adapter's statistics do not move."""
    with stage.evaluating():
        out = stage.outputs(stage.supervision.sample(stage.teacher), step)
        c0, c1, f = out["c0"], out["c1"], out["features"]
        f0, f1 = (out["f0"], out["f1"]) if "f0" in out else stage.adapter(f)
    keep = 1.0 - stage.adapter.ratio                        # the centred input's share of the output (0.8)
    branch_c, branch_f = c1 - keep * c0, f1 - keep * f0
    return {"|c0|": _norm(c0), "|c'-0.8c0|": _norm(branch_c), "|f|": _norm(f),
            "cos(c',c0)": _cos(c1, c0), "cos(f,c0)": _cos(f, c0),
            "cos(f',c')": _cos(f1, c1), "cos(branches)": _cos(branch_c, branch_f),
            "cos(branch, its row mean)": _cos(branch_c, branch_c.mean(0, keepdim=True).expand_as(branch_c))}


@torch.no_grad()
def evaluate(stage, every: int) -> dict:
    scene = stage.eval_scene
    truths, scores, teacher_scores = [], [], []
    with stage.evaluating():
        for view in scene.annotated_views:
            scores.append(stage.class_scores(view, stride=every)[0].cpu())
            truths.append(scene.annotations[view][::every, ::every])
            teacher_scores.append(stage.teacher.pixel_scores(view, mode="nearest")[::every, ::every])
    result = segmentation_metrics(truths, scores, scene.score_unlabelled)
    teacher = segmentation_metrics(truths, teacher_scores, scene.score_unlabelled)

    def per_class(r: dict) -> dict:
        return {n: round(v, 2) for n, v in zip(scene.classes, torch.tensor(r["per_view_iou"]).mean(0).tolist())}

    return {"miou": round(result["miou"], 4), "accuracy": round(result["accuracy"], 4),
            "per_class": per_class(result), "teacher_miou": round(teacher["miou"], 4),
            "teacher_per_class": per_class(teacher)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage1", required=True, help="a stage-1 checkpoint of this scene and stage-1 config")
    parser.add_argument("--steps", default="1000", help="comma-separated steps to evaluate at")
    parser.add_argument("--every", type=int, default=4, help="evaluate every n-th pixel of each annotated view")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        cfg = compose("train", overrides=["logger=none", *args.overrides])
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    reconstruction, identity = build_reconstruction(cfg, device)
    checkpoint.restore_stage(reconstruction, args.stage1, identity)
    stage, _ = build_segmentation(cfg, prepare_segmentation(cfg, reconstruction.scene), reconstruction.field, device)
    done, train_s, losses = 0, 0.0, {}
    for target in sorted(int(s) for s in args.steps.split(",")):
        start = time.perf_counter()
        while done < target:
            losses = read_figures(stage.train_step(done))
            done += 1
        train_s += time.perf_counter() - start
        line = {"step": done, "train_s": round(train_s, 1), **evaluate(stage, args.every),
                "losses": {k: round(v, 3) for k, v in losses.items()}}
        if getattr(stage, "adapter", None) is not None:
            line["adapter"] = adapter_statistics(stage, done)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
