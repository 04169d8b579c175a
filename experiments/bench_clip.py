"""Benchmark of the language features (issue 3). Prints one JSON line per measurement.

1. Dense-feature throughput of CLIP ViT-B/16 with the SCLIP last block, random weights (the time does not depend on
   the values), at 224 and 448 px: fp32 on CPU; fp16 autocast on CUDA when a GPU is present.
2. The oracle teacher's own 2D argmax mIoU (3D-OVS protocol, LASER.md §11) on the annotated views of the default
   synthetic scene, with the tiny CLIP's text embeddings, for seeds 0-4.
3. Cache bytes per image against 3D-OVS's fp32 pyramid.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python experiments/bench_clip.py [--scene data/synthetic]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing the package

import laser  # noqa: E402,F401  (before open_clip)
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from laser.data.llff import load_llff_scene  # noqa: E402
from laser.data.synthetic import ensure_scene  # noqa: E402
from laser.evaluation.metrics import segmentation_metrics  # noqa: E402
from laser.language.clip_model import load_clip  # noqa: E402
from laser.language.dense_clip import DenseClip  # noqa: E402
from laser.language.text import TextEncoder  # noqa: E402


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def throughput(size: int, batch: int, repeats: int) -> None:
    """Images per second of dense ViT-B/16 features at ``size`` x ``size``."""
    clip = load_clip("ViT-B-16", pretrained=None, precision="fp16")
    dense = DenseClip(clip, "sclip")
    images = torch.rand(batch, size, size, 3, device=clip.device)
    dense(images)  # warm-up: allocations, kernel selection
    if clip.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        features = dense(images)
    if clip.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / (repeats * batch)
    emit(measure="dense_clip_throughput", model="ViT-B-16 (random weights)", mode="sclip", size=size, batch=batch,
         device=str(clip.device), precision="fp16 autocast" if clip.device.type == "cuda" else "fp32",
         threads=torch.get_num_threads(), output=list(features.shape[1:]), ms_per_image=round(seconds * 1e3, 2),
         images_per_s=round(1.0 / seconds, 2))


def oracle_miou(scene_dir: str, seeds: int) -> None:
    """2D argmax mIoU of the oracle teacher's whole-view features on the annotated views."""
    scene = load_llff_scene(ensure_scene(scene_dir))
    clip = instantiate(OmegaConf.load(os.path.join(ROOT, "conf", "clip", "tiny.yaml")))
    text = TextEncoder(clip)(scene.classes)
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        teacher_cfg = compose("train", overrides=["scene=synthetic", "model=laser"]).teacher   # dense oracle
    defaults = OmegaConf.to_container(teacher_cfg, resolve=True)
    defaults.pop("_target_")
    values = []
    for seed in range(seeds):
        teacher = instantiate(teacher_cfg, seed=seed)
        teacher.prepare(scene, text)
        scores = [teacher.pixel_scores(view) for view in scene.annotated_views]
        metrics = segmentation_metrics([scene.annotations[v] for v in scene.annotated_views], scores)
        values.append(metrics["miou"])
        emit(measure="oracle_2d_miou", scene=scene_dir, seed=seed, miou=round(100 * metrics["miou"], 1),
             accuracy=round(100 * metrics["accuracy"], 1), views=scene.annotated_views, classes=len(scene.classes))
    emit(measure="oracle_2d_miou_mean", seeds=seeds, miou=round(100 * sum(values) / len(values), 1),
         min=round(100 * min(values), 1), max=round(100 * max(values), 1), settings=defaults)


def cache_bytes(height: int, width: int) -> None:
    """Our fp16 token cache (one 512-d token per 16x16 block) vs 3D-OVS's ``3 x 512 x H/8 x W/8`` fp32 pyramid."""
    ours = 512 * -(-height // 16) * -(-width // 16) * 2
    ovs = 3 * 512 * (height // 8) * (width // 8) * 4
    emit(measure="cache_bytes_per_image", height=height, width=width, ours_fp16=ours, ovs3d_fp32=ovs,
         ratio=round(ovs / ours, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scene", default=os.path.join(ROOT, "data", "synthetic"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--batch", type=int, default=8, help="crops per forward (Laser's patch_num)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    emit(measure="machine", cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
         cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None, torch=torch.__version__)
    for size in args.sizes:
        throughput(size, args.batch, args.repeats)
    oracle_miou(args.scene, args.seeds)
    cache_bytes(240, 320)        # the synthetic scene
    # A 4032x3024 source (3D-OVS's true size is unverified, LASER.md §1.4) at x5 (Laser's crops) and x8 (3D-OVS's).
    cache_bytes(604, 806)
    cache_bytes(378, 504)


if __name__ == "__main__":
    main()
