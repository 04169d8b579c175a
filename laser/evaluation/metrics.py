"""Image and segmentation metrics.

Segmentation follows the 3D-OVS / Laser evaluation code exactly (LASER.md §11), which used scikit-learn:
per (view, class) binary IoU with 0 when a class is absent from both ground truth and prediction, and
*subset* accuracy (a pixel counts only if its ground-truth row equals the predicted one-hot row).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(prediction: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1]."""
    mse = F.mse_loss(prediction, target).item()
    return float("inf") if mse == 0 else -10.0 * torch.log10(torch.tensor(mse)).item()


def ssim(prediction: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity of ``[H, W, 3]`` images in [0, 1]: Gaussian window, valid region only
    (the variant TensoRF reports)."""
    coords = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(3, 1, window, window).to(prediction)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, kernel, groups=3)

    x = prediction.permute(2, 0, 1)[None]
    y = target.permute(2, 0, 1)[None]
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value.mean().item()


def per_class_iou(truth: Tensor, prediction: Tensor) -> Tensor:
    """Binary IoU of every class column: ``[P, C]`` bool x ``[P, C]`` bool -> ``[C]``; 0 where the union is empty
    (scikit-learn's ``jaccard_score(average=None)`` with its default ``zero_division``)."""
    intersection = (truth & prediction).sum(0).float()
    union = (truth | prediction).sum(0).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union))


def subset_accuracy(truth: Tensor, prediction: Tensor) -> float:
    """Share of pixels whose whole ground-truth row equals the predicted row (``accuracy_score`` on multilabel)."""
    return (truth == prediction).all(dim=1).float().mean().item()


def segmentation_metrics(truths: list[Tensor], scores: list[Tensor],
                         score_unlabelled: bool = True) -> dict[str, float | list]:
    """3D-OVS metrics over annotated views.

    ``truths``: per view ``[H, W, C]`` bool masks; ``scores``: per view ``[H, W, C]`` class scores (argmax is the
    prediction; every pixel gets a class). Returns the scene ``miou`` (mean over all (view, class) pairs),
    ``accuracy`` (mean over views of subset accuracy) and ``per_view_iou`` (``[V][C]``). ``score_unlabelled=False``
    leaves out the pixels in no mask (a transparent background) instead of scoring them as wrong.
    """
    if not truths:
        raise ValueError("no annotated views to evaluate")
    ious, accuracies = [], []
    for truth, score in zip(truths, scores):
        if truth.shape != score.shape:
            raise ValueError(f"ground truth {tuple(truth.shape)} and scores {tuple(score.shape)} differ in shape")
        num_classes = truth.shape[-1]
        truth = truth.reshape(-1, num_classes).bool()
        prediction = F.one_hot(score.reshape(-1, num_classes).argmax(-1), num_classes).bool()
        if not score_unlabelled:
            labelled = truth.any(dim=1)
            truth, prediction = truth[labelled], prediction[labelled]
        ious.append(per_class_iou(truth, prediction))
        accuracies.append(subset_accuracy(truth, prediction))
    stacked = torch.stack(ious)
    return {"miou": stacked.mean().item(), "accuracy": sum(accuracies) / len(accuracies),
            "per_view_iou": stacked.tolist()}


def normalized_relevancy(scores: Tensor) -> Tensor:
    """Scores ``[H, W, Q]`` of a view -> each phrase's map min-max normalised over the view to [0, 1] (a constant
    map becomes 0): a relevancy threshold then means the same for every phrase and every method."""
    flat = scores.reshape(-1, scores.shape[-1])
    low, high = flat.amin(dim=0), flat.amax(dim=0)
    return (scores - low) / (high - low).clamp(min=1e-12)


def per_query_metrics(truths: list[Tensor], scores: list[Tensor], threshold: float) -> dict[str, float | list]:
    """The LangSplat per-query protocol (LASER.md, rulings): each phrase's mask is its normalised relevancy
    (:func:`normalized_relevancy`) above ``threshold``, alone, not competing with the other phrases; its IoU with
    the phrase's ground-truth mask is taken in every view where the phrase is present (LangSplat's annotations list
    only the objects present in a frame).

    ``truths``, ``scores``: per view ``[H, W, C]`` bool masks and scores, one column per phrase. Returns ``miou``
    (mean over the phrases of their mean IoU) and ``per_phrase_iou`` ``[C]`` (None for a phrase present in no view).
    LangSplat also smooths each map with a 29-pixel mean filter before thresholding; this protocol does not.
    """
    if not truths:
        raise ValueError("no annotated views to evaluate")
    sums = torch.zeros(truths[0].shape[-1])
    counts = torch.zeros_like(sums)
    for truth, score in zip(truths, scores):
        if truth.shape != score.shape:
            raise ValueError(f"ground truth {tuple(truth.shape)} and scores {tuple(score.shape)} differ in shape")
        truth = truth.reshape(-1, truth.shape[-1]).bool()
        mask = normalized_relevancy(score.float()).reshape(truth.shape) > threshold
        present = truth.any(dim=0)
        sums += torch.where(present, per_class_iou(truth, mask), torch.zeros_like(sums))
        counts += present.float()
    per_phrase = [float(s / c) if c else None for s, c in zip(sums, counts)]
    seen = [v for v in per_phrase if v is not None]
    return {"miou": sum(seen) / len(seen) if seen else 0.0, "per_phrase_iou": per_phrase}
