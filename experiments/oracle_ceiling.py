"""What a 3D field could reach from the dense oracle teacher on the default synthetic scene: ceilings, not runs.

Everything is computed from the labels and the oracle's confused class maps, on the 4 annotated views, with the
3D-OVS metrics (LASER.md §11) and argmax of cosine to the class text embeddings:

- ``teacher``: the teacher's own 2D result (its full-image 16-px tokens, bilinearly upsampled; the issue's bar).
- ``ideal 3D, 16-px box``: a field that has averaged the teacher over views perfectly (noise, blotches, artifact
  tokens, per-crop jitter and per-view confusions gone, the consistent confusions kept at their measured rates) and
  still carries the blur of the training targets, a 16 x 16 box around each pixel (every token is a block mean,
  crops start at any pixel). With the ``dense_clip`` noise model it also keeps the context that averaging cannot
  remove: ``context_weight`` times the mean class shares of the Laser-sized crops (``model.supervision.patch_size``)
  that contain the pixel.
- ``ideal 3D, no blur``: the same without the box (and without the context): the most any method can recover from
  this teacher.
- ``true labels, 16-px box``: the box blur alone, without any confusion.

Run: ``.venv/bin/python experiments/oracle_ceiling.py [override ...]``
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing the package

import laser  # noqa: E402,F401  (before open_clip)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from laser.data.scenes import load_scene  # noqa: E402
from laser.evaluation.metrics import segmentation_metrics  # noqa: E402
from laser.training.build import prepare_segmentation  # noqa: E402


def box_mean(shares: torch.Tensor, size: int) -> torch.Tensor:
    """``[C, H, W]`` averaged over a ``size``-px box around each pixel (edges replicated)."""
    if size <= 1:
        return shares
    pad = (size // 2, size // 2 - 1, size // 2, size // 2 - 1)
    return F.avg_pool2d(F.pad(shares[None], pad, mode="replicate"), size, stride=1)[0]


def box_scores(shares: torch.Tensor, text: torch.Tensor, size: int, context: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Class shares ``[C, H, W]`` averaged over a ``size``-px box around each pixel, plus the class weights of a
    ``context`` ``[C, H, W]`` -> cosine scores ``[H, W, C]``. (A component orthogonal to the text, the oracle's
    global one, changes no argmax and is left out.)"""
    weights = box_mean(shares, size) + (0 if context is None else context)
    unit = F.normalize(text, dim=-1)
    return F.normalize(torch.einsum("chw,cd->hwd", weights, text), dim=-1) @ unit.T


def main() -> None:
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        cfg = compose("train", overrides=["logger=none", *sys.argv[1:]])
    prepared = prepare_segmentation(cfg, load_scene(cfg.scene, cfg.scene.downsample.reconstruction))
    scene, text, teacher = prepared.eval_scene, prepared.text.embeddings, prepared.teacher
    classes, views = scene.classes, scene.annotated_views
    truths = [scene.annotations[v] for v in views]
    one_hot = (scene.labels[:, None] == torch.arange(len(classes))[None, :, None, None]).float()    # [V, C, H, W]
    # confusion[c, d]: share of class-c pixels (all views) that the teacher's maps give class d.
    confusion = torch.stack([torch.bincount(teacher.class_maps[scene.labels == c], minlength=len(classes)).float()
                             for c in range(len(classes))])
    confusion = confusion / confusion.sum(1, keepdim=True)

    averaged = {v: torch.einsum("chw,cd->dhw", one_hot[v], confusion) for v in views}     # [C, H, W]
    context = dict.fromkeys(views)
    if cfg.teacher.noise_model == "dense_clip":
        # Crops of P px holding the pixel: their top-left corners span a P x P box, each crop's shares a P x P
        # box mean, so the mean share is a box of a box.
        size = int(cfg.model.supervision.patch_size)
        context = {v: cfg.teacher.context_weight * box_mean(box_mean(averaged[v], size), size) for v in views}
    rows = {
        "teacher (2D, bilinear tokens)": [teacher.pixel_scores(v) for v in views],
        "ideal 3D, 16-px box": [box_scores(averaged[v], text, 16, context[v]) for v in views],
        "ideal 3D, no blur": [box_scores(averaged[v], text, 1) for v in views],
        "true labels, 16-px box": [box_scores(one_hot[v], text, 16) for v in views],
    }
    print("| | mIoU % | accuracy % | " + " | ".join(classes) + " |")
    print("|---" * (len(classes) + 3) + "|")
    for name, scores in rows.items():
        result = segmentation_metrics(truths, scores, scene.score_unlabelled)
        per_class = torch.tensor(result["per_view_iou"]).mean(0).tolist()
        print(f"| {name} | {100 * result['miou']:.1f} | {100 * result['accuracy']:.1f} | "
              + " | ".join(f"{100 * v:.0f}" for v in per_class) + " |")
    print("confused share per class:", {n: round(1 - float(confusion[c, c]), 2) for c, n in enumerate(classes)})


if __name__ == "__main__":
    main()
