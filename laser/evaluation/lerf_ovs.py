"""The LERF-OVS benchmark (LangSplat's relabelled LERF scenes): its annotations and its two metrics.

Annotations: one labelme-style JSON per annotated frame, ``frame_<n>.json`` in a label folder (LangSplat's
``lerf_ovs/label/<scene>/``)::

    {"info": {"name": "frame_00042.jpg", "width": W, "height": H},
     "objects": [{"category": "red apple", "bbox": [x1, y1, x2, y2], "segmentation": [[x, y], ...]}, ...]}

``info.name`` names the frame's image; it is matched to the scene's image of the same stem (LangSplat takes the
frame number minus one as the view index, which is the same view for ns-process-data's frame names). Coordinates
are pixels of the ``W x H`` image, pixel centres at integers (OpenCV's ``fillPoly``, which LangSplat fills with);
they are scaled to the resolution evaluated at. Several objects of one category are one phrase: the union of their
polygons, any of their boxes.

Metrics, per (frame, phrase of that frame), as LangSplat's ``eval/evaluate_iou_loc.py`` computes them from the
phrase's relevancy map ``r`` ``[H, W]``:

- **localisation**: ``m = mean_30(r)``, a 30 x 30 box filter (OpenCV's ``filter2D``: anchor at the centre, borders
  reflected without repeating the edge); a hit when a pixel of maximal ``m`` lies in one of the phrase's boxes
  (edges included). The accuracy is hits / (frame, phrase) pairs.
- **IoU**: ``v = (m + r) / 2``, min-max normalised over the frame to [-1, 1] and clipped to [0, 1]; the mask is
  ``v > 0.4``, then a 7 x 7 majority filter (LangSplat's ``smooth``, whose windows stop one short of the last row and
  column, reproduced); its IoU with the phrase's mask. ``miou`` is the mean over the (frame, phrase) pairs.

LangSplat renders three levels (SAM's scales) and keeps, for each metric, the level of the highest maximum; a laser
method renders one map per phrase (LERF's relevancy is already its best scale), so the choice is that map. The map
is the method's own query score (:meth:`laser.query.SceneQuery.scores`): LERF's relevancy, the cosine similarity of
Laser and 3D-OVS. Every step above is unchanged by an increasing affine map of the scores, so the cosine needs no
rescaling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from laser.data.blender import read_json
from laser.errors import DataError

MASK_THRESHOLD = 0.4          # LangSplat's --mask_thresh
FILTER_SIZE = 30              # the mean filter before the argmax and the mask
SMOOTH_RADIUS = 3             # the majority filter's half window


@dataclass
class PhraseTarget:
    """The ground truth of one phrase in one frame, at the evaluated resolution."""

    mask: Tensor                  # [H, W] bool: the union of its polygons
    boxes: Tensor                 # [B, 4] float (x1, y1, x2, y2) in pixels


def _number_list(value, length: int | None = None) -> bool:
    return (isinstance(value, (list, tuple)) and (length is None or len(value) == length)
            and all(isinstance(v, (int, float)) and np.isfinite(v) for v in value))


def read_frame(path: Path, size: tuple[int, int]) -> tuple[str, dict[str, PhraseTarget]]:
    """One annotation file -> its image name and ``{phrase: target}`` at ``size`` = (W, H)."""
    data = read_json(path, "annotation file not found")
    info = data.get("info") if isinstance(data, dict) else None
    if not isinstance(info, dict) or not {"name", "width", "height"} <= set(info):
        raise DataError(path, "needs an 'info' object with 'name', 'width' and 'height'")
    objects = data.get("objects")
    if not isinstance(objects, list) or not objects:
        raise DataError(path, "needs a non-empty 'objects' list")
    width, height = size
    sx, sy = width / float(info["width"]), height / float(info["height"])
    masks: dict[str, Image.Image] = {}
    boxes: dict[str, list[list[float]]] = {}
    for index, obj in enumerate(objects):
        category = obj.get("category") if isinstance(obj, dict) else None
        polygon = obj.get("segmentation") if isinstance(obj, dict) else None
        if not isinstance(category, str) or not category.strip():
            raise DataError(path, f"object {index} has no 'category'")
        if not _number_list(obj.get("bbox"), 4):
            raise DataError(path, f"object {index} ({category}): 'bbox' must be [x1, y1, x2, y2]")
        if not isinstance(polygon, list) or len(polygon) < 3 or not all(_number_list(p, 2) for p in polygon):
            raise DataError(path, f"object {index} ({category}): 'segmentation' must list 3 or more [x, y] points")
        # Pixel centres at integers in both resolutions: x' = (x + 0.5) s - 0.5.
        mask = masks.setdefault(category, Image.new("1", (width, height), 0))
        ImageDraw.Draw(mask).polygon([((x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5) for x, y in polygon], fill=1)
        x1, y1, x2, y2 = obj["bbox"]
        boxes.setdefault(category, []).append([(x1 + 0.5) * sx - 0.5, (y1 + 0.5) * sy - 0.5,
                                               (x2 + 0.5) * sx - 0.5, (y2 + 0.5) * sy - 0.5])
    targets = {c: PhraseTarget(torch.from_numpy(np.array(masks[c], dtype=bool)), torch.tensor(boxes[c]))
               for c in masks}
    return str(info["name"]), targets


def read_annotations(folder: str | Path, image_paths: list[str], size: tuple[int, int]
                     ) -> dict[int, dict[str, PhraseTarget]]:
    """Every ``frame_*.json`` of ``folder`` -> ``{view: {phrase: target}}``, views indexing ``image_paths`` (the
    scene's images, matched by stem), targets at ``size`` = (W, H)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "LERF-OVS label folder not found")
    files = sorted(folder.glob("frame_*.json"))
    if not files:
        raise DataError(folder, "no frame_*.json annotation file (LangSplat's lerf_ovs/label/<scene>/ layout)")
    views = {Path(p).stem: view for view, p in enumerate(image_paths)}
    annotations: dict[int, dict[str, PhraseTarget]] = {}
    for path in files:
        name, targets = read_frame(path, size)
        view = views.get(Path(name).stem)
        if view is None:
            raise DataError(path, f"frame {name!r} is not among the scene's images "
                                  f"({Path(image_paths[0]).name} ... {Path(image_paths[-1]).name})")
        if view in annotations:
            raise DataError(path, f"frame {name!r} is annotated twice")
        annotations[view] = targets
    return annotations


def mean_filter(scores: Tensor, size: int = FILTER_SIZE) -> Tensor:
    """OpenCV's ``filter2D`` with a ``size x size`` box: ``[H, W]`` -> ``[H, W]``, anchored at ``size // 2``,
    borders reflected (``BORDER_REFLECT_101``)."""
    before, after = size // 2, size - 1 - size // 2
    rows, cols = (_reflected(n, before, after) for n in scores.shape)
    padded = scores.double()[rows][:, cols]
    return F.avg_pool2d(padded[None, None], size, stride=1)[0, 0].to(scores.dtype)


def _reflected(n: int, before: int, after: int) -> Tensor:
    """Source indices of ``[-before, n + after)`` under ``BORDER_REFLECT_101`` (``gfedcb|abcdefgh|gfedcba``,
    repeated for pads longer than the image)."""
    if n == 1:
        return torch.zeros(n + before + after, dtype=torch.long)
    period = 2 * (n - 1)
    index = torch.arange(-before, n + after) % period
    return torch.where(index < n, index, period - index)


def majority_smooth(mask: Tensor, radius: int = SMOOTH_RADIUS) -> Tensor:
    """LangSplat's ``smooth``: each pixel becomes the majority of its window (a tie gives 0), the window of pixel
    ``(i, j)`` being rows ``max(0, i - r) .. min(i + r + 1, H - 1) - 1`` and the same for columns."""
    height, width = mask.shape
    integral = F.pad(mask.double().cumsum(0).cumsum(1), (1, 0, 1, 0))              # [H + 1, W + 1]
    rows, cols = torch.arange(height), torch.arange(width)
    top, bottom = (rows - radius).clamp(min=0), (rows + radius + 1).clamp(max=height - 1)
    left, right = (cols - radius).clamp(min=0), (cols + radius + 1).clamp(max=width - 1)
    ones = (integral[bottom][:, right] - integral[top][:, right] - integral[bottom][:, left]
            + integral[top][:, left])
    area = (bottom - top)[:, None] * (right - left)[None, :]
    return 2 * ones > area


def localization_hit(scores: Tensor, boxes: Tensor) -> bool:
    """Whether a maximum of the filtered map ``[H, W]`` lies in one of the boxes ``[B, 4]``."""
    filtered = mean_filter(scores.double())
    y, x = torch.nonzero(filtered == filtered.max(), as_tuple=True)
    low = torch.minimum(boxes[:, :2], boxes[:, 2:]).double()
    high = torch.maximum(boxes[:, :2], boxes[:, 2:]).double()
    points = torch.stack([x, y], dim=-1).double()[:, None]                          # [P, 1, 2]
    return bool(((points >= low) & (points <= high)).all(-1).any())


def phrase_mask(scores: Tensor, threshold: float = MASK_THRESHOLD) -> Tensor:
    """The protocol's predicted mask ``[H, W]`` bool of a relevancy map ``[H, W]``."""
    scores = scores.double()
    value = 0.5 * (mean_filter(scores) + scores)
    value = (value - value.min()) / (value.max() - value.min() + 1e-9)
    return majority_smooth((2.0 * value - 1.0).clamp(0.0, 1.0) > threshold)


def phrase_iou(scores: Tensor, target: PhraseTarget, threshold: float = MASK_THRESHOLD) -> float:
    prediction = phrase_mask(scores, threshold)
    union = (prediction | target.mask).sum().item()
    return (prediction & target.mask).sum().item() / union if union else 0.0


def lerf_ovs_metrics(annotations: dict[int, dict[str, PhraseTarget]], scores: dict[int, dict[str, Tensor]],
                     threshold: float = MASK_THRESHOLD) -> dict:
    """Localisation accuracy and mIoU over every (frame, phrase) pair.

    ``scores``: ``{view: {phrase: [H, W] relevancy}}`` for every phrase of ``annotations``. Returns
    ``localization_accuracy``, ``miou``, ``pairs`` and ``per_phrase`` (``{phrase: {"accuracy", "iou", "frames"}}``).
    """
    per_phrase: dict[str, dict[str, list]] = {}
    for view, targets in sorted(annotations.items()):
        for phrase, target in targets.items():
            relevancy = scores[view][phrase]
            if relevancy.shape != target.mask.shape:
                raise ValueError(f"view {view}, {phrase!r}: scores {tuple(relevancy.shape)} but the annotation is "
                                 f"{tuple(target.mask.shape)}")
            entry = per_phrase.setdefault(phrase, {"hits": [], "ious": []})
            entry["hits"].append(localization_hit(relevancy, target.boxes))
            entry["ious"].append(phrase_iou(relevancy, target, threshold))
    hits = [h for e in per_phrase.values() for h in e["hits"]]
    ious = [i for e in per_phrase.values() for i in e["ious"]]
    if not hits:
        raise ValueError("no annotated phrase to evaluate")
    return {"localization_accuracy": sum(hits) / len(hits), "miou": sum(ious) / len(ious), "pairs": len(hits),
            "threshold": threshold,
            "per_phrase": {p: {"accuracy": sum(e["hits"]) / len(e["hits"]), "iou": sum(e["ious"]) / len(e["ious"]),
                               "frames": len(e["hits"])} for p, e in sorted(per_phrase.items())}}
