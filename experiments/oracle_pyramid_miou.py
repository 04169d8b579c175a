"""The oracle teacher's own 2D argmax mIoU in its ``ovs3d`` (crop pyramid) form on the default synthetic scene.

The teacher is configured as ``train.py model=ovs3d`` configures it (the oracle's per-pixel pyramid, the scene's pyramid
downsampling) with the tiny CLIP's text embeddings. Per annotated view: the maps averaged over the scales, cosine
similarity to each class text embedding, bilinearly upsampled to the image, argmax; 3D-OVS metrics (LASER.md §11).
Prints one JSON line per seed.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python experiments/oracle_pyramid_miou.py [--seeds 1] [override ...]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing the package

import laser  # noqa: E402,F401  (before open_clip)
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from laser.data.scenes import load_scene  # noqa: E402
from laser.evaluation.metrics import segmentation_metrics  # noqa: E402
from laser.language.text import TextEncoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=1, help="teacher seeds 0 .. seeds-1")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml, e.g. scene.root=...")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        cfg = compose("train", overrides=["model=ovs3d", *args.overrides])
    scene = load_scene(cfg.scene, cfg.scene.downsample.patch)
    text = TextEncoder(instantiate(cfg.clip))(scene.classes)                                 # [C, D]
    for seed in range(args.seeds):
        teacher = instantiate(cfg.teacher, seed=seed)
        teacher.prepare(scene, text)
        scores = []
        for view in scene.annotated_views:
            mean = teacher.maps(view).mean(dim=0)                                               # [D, H', W']
            logits = F.normalize(mean, dim=0).permute(1, 2, 0) @ text.T                        # [H', W', C]
            pixels = F.interpolate(logits.permute(2, 0, 1)[None], size=(scene.height, scene.width),
                                   mode="bilinear", align_corners=False)[0]
            scores.append(pixels.permute(1, 2, 0))
        metrics = segmentation_metrics([scene.annotations[v] for v in scene.annotated_views], scores)
        print(json.dumps({"measure": "oracle_ovs3d_2d_miou", "seed": seed, "miou": round(100 * metrics["miou"], 1),
                          "accuracy": round(100 * metrics["accuracy"], 1), "views": scene.annotated_views,
                          "teacher": OmegaConf.to_container(cfg.teacher, resolve=True)}), flush=True)


if __name__ == "__main__":
    main()
