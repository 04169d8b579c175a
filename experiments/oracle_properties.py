"""The oracle teacher's dense-CLIP-like properties, measured on a scene (the default synthetic one): one table.

On crops of the size Laser's supervision draws (``model.supervision.patch_size``), with the configured teacher and
the scene's true labels; a token is *pure* when all its 16 x 16 pixels have one true class:

- far from the text: cosine of pure tokens to their true class text, to the best wrong class, and the margin;
- tokens of different objects in one crop: their cosine;
- context dependence: cosine of one pixel's tokens in two overlapping crops, argmax agreement, and accuracy of
  single-crop tokens against tokens averaged over 24 crops per position;
- spatially coherent errors: correlation of the error indicator of whole-view tokens at lags of 1, 2, 4, 8 tokens,
  and of one view's errors between two draws (blotches are per view) against two views' at the same pixel;
- artifact tokens: share of tokens above 3x their crop's median norm, and their norm ratio;
- independent noise: the per-token part of the difference between two draws of one crop, over the token norm;
- the teacher's own 2D mIoU (whole views, ``pixel_scores``).

Run: ``.venv/bin/python experiments/oracle_properties.py [override ...]`` (Hydra overrides of conf/train.yaml).
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

from laser.data.patches import PatchBatch  # noqa: E402
from laser.data.scenes import load_scene  # noqa: E402
from laser.evaluation.metrics import segmentation_metrics  # noqa: E402
from laser.training.build import prepare_segmentation  # noqa: E402

TOKEN = 16


def pure_labels(labels: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` labels -> ``[B, H/16, W/16]`` class of each token whose pixels share one class, else -1."""
    blocks = labels.unfold(1, TOKEN, TOKEN).unfold(2, TOKEN, TOKEN).flatten(3)
    pure = (blocks == blocks[..., :1]).all(-1) & (blocks[..., 0] >= 0)
    return torch.where(pure, blocks[..., 0], -1)


def crops(teacher, scene, corners: list[tuple[int, int, int]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher tokens ``[B, g, g, D]`` and pure true classes ``[B, g, g]`` of crops at (view, row, col)."""
    views = torch.tensor([v for v, _, _ in corners])
    top_left = torch.tensor([[r, c] for _, r, c in corners])
    labels = torch.stack([scene.labels[v, r : r + size, c : c + size] for v, r, c in corners])
    batch = PatchBatch(images=torch.zeros(len(corners), size, size, 3), views=views, top_left=top_left)
    return teacher(batch).cpu(), pure_labels(labels)


def lag_correlation(errors: torch.Tensor, valid: torch.Tensor, lag: int) -> float:
    """Correlation of a 0/1 error map ``[V, h, w]`` with itself shifted ``lag`` tokens right, where both are valid."""
    a, b = errors[:, :, :-lag], errors[:, :, lag:]
    both = valid[:, :, :-lag] & valid[:, :, lag:]
    return float(torch.corrcoef(torch.stack([a[both].float(), b[both].float()]))[0, 1])


def main() -> None:
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        cfg = compose("train", overrides=["logger=none", *sys.argv[1:]])
    prepared = prepare_segmentation(cfg, load_scene(cfg.scene, cfg.scene.downsample.patch))
    scene, teacher = prepared.eval_scene, prepared.teacher
    text = F.normalize(prepared.text.embeddings.cpu(), dim=-1)
    size = int(cfg.model.supervision.patch_size)
    generator = torch.Generator().manual_seed(0)
    views = list(scene.train_views)
    rows: list[tuple[str, str]] = []

    # Random crops, aligned to the 16-px grid so that tokens of overlapping crops cover the same pixels.
    def aligned(view: int) -> tuple[int, int, int]:
        r = int(torch.randint((scene.height - size) // TOKEN + 1, (1,), generator=generator)) * TOKEN
        c = int(torch.randint((scene.width - size) // TOKEN + 1, (1,), generator=generator)) * TOKEN
        return view, r, c

    corners = [aligned(views[i % len(views)]) for i in range(480)]
    tokens, truth = crops(teacher, scene, corners, size)
    unit = F.normalize(tokens, dim=-1)
    cosines = unit @ text.T                                                          # [B, g, g, C]
    pure = truth >= 0
    matched = cosines[pure].gather(1, truth[pure][:, None])[:, 0]
    wrong = cosines[pure].scatter(1, truth[pure][:, None], -2.0).amax(dim=1)
    margin = matched - wrong
    q = torch.tensor([0.1, 0.5, 0.9])
    fmt = lambda x: " / ".join(f"{v:.3f}" for v in torch.quantile(x, q).tolist())  # noqa: E731
    rows += [("cosine to the true class text (p10 / median / p90)", fmt(matched)),
             ("cosine to the best wrong class text", fmt(wrong)),
             ("margin, true minus best wrong", fmt(margin)),
             ("share of pure tokens whose argmax is wrong", f"{float((margin < 0).float().mean()):.3f}")]

    # Tokens of different objects in one crop.
    pairs = []
    for b in range(len(corners)):
        flat, cls = unit[b].flatten(0, 1), truth[b].flatten()
        keep = cls >= 0
        flat, cls = flat[keep], cls[keep]
        different = cls[:, None] != cls[None, :]
        if different.any():
            pairs.append((flat @ flat.T)[different])
    text_pairs = (text @ text.T)[~torch.eye(len(text), dtype=torch.bool)]
    rows.append(("cosine of tokens of different objects in one crop (median)",
                 f"{float(torch.cat(pairs).median()):.3f} (their texts: {float(text_pairs.median()):.3f})"))

    # Context: the same pixel in two crops of one view, and averaging over crops.
    g = size // TOKEN
    shifted = [(v, min(r + TOKEN, scene.height - size), c) for v, r, c in corners]
    moved, _ = crops(teacher, scene, shifted, size)
    overlap = [b for b in range(len(corners)) if shifted[b][1] == corners[b][1] + TOKEN]
    first = unit[overlap, 1:]                                                       # rows 1.. of the first crop
    second = F.normalize(moved[overlap, : g - 1], dim=-1)                           # = rows 0.. of the shifted one
    same_pixel = (first * second).sum(-1)
    agree = ((first @ text.T).argmax(-1) == (second @ text.T).argmax(-1)).float().mean()
    rows.append(("one pixel in two crops: token cosine (median), argmax agreement",
                 f"{float(same_pixel.median()):.3f}, {float(agree):.3f}"))
    view = views[0]
    grid_rows, grid_cols = scene.height // TOKEN, scene.width // TOKEN
    total = torch.zeros(grid_rows, grid_cols, text.shape[1])
    count = torch.zeros(grid_rows, grid_cols, 1)
    single_right = single_all = 0
    positions = [(r, c) for r in range(0, scene.height - size + 1, TOKEN) for c in range(0, scene.width - size + 1,
                                                                                       TOKEN)]
    for r, c in positions:
        many, cls = crops(teacher, scene, [(view, r, c)] * 24, size)
        total[r // TOKEN : r // TOKEN + g, c // TOKEN : c // TOKEN + g] += F.normalize(many, dim=-1).sum(0)
        count[r // TOKEN : r // TOKEN + g, c // TOKEN : c // TOKEN + g] += len(many)
        keep = cls >= 0
        single_right += int(((F.normalize(many, dim=-1) @ text.T).argmax(-1) == cls)[keep].sum())
        single_all += int(keep.sum())
    view_truth = pure_labels(scene.labels[view : view + 1, : grid_rows * TOKEN, : grid_cols * TOKEN])[0]
    mean_tokens = total / count.clamp(min=1)
    averaged = ((mean_tokens @ text.T).argmax(-1) == view_truth)[(view_truth >= 0) & (count[..., 0] > 0)]
    rows.append((f"accuracy of pure tokens of view {view}: one crop, averaged over 24 crops per position",
                 f"{single_right / single_all:.3f}, {float(averaged.float().mean()):.3f}"))

    # Spatially coherent errors, on whole views.
    annotated = list(range(scene.num_views))
    whole = torch.stack([teacher.full_image(v)[:grid_rows, :grid_cols] for v in annotated])       # [V, h, w, D]
    view_truth = pure_labels(scene.labels[:, : grid_rows * TOKEN, : grid_cols * TOKEN])
    valid = view_truth >= 0
    errors = (F.normalize(whole, dim=-1) @ text.T).argmax(-1) != view_truth
    rows.append(("error correlation at lags 1 / 2 / 4 / 8 tokens",
                 " / ".join(f"{lag_correlation(errors, valid, lag):.2f}" for lag in (1, 2, 4, 8))))
    again = torch.stack([teacher.full_image(v)[:grid_rows, :grid_cols] for v in annotated])
    errors_again = (F.normalize(again, dim=-1) @ text.T).argmax(-1) != view_truth
    other_view = errors.roll(1, dims=0)
    both = valid & valid.roll(1, dims=0)
    corr = lambda a, b, m: float(torch.corrcoef(torch.stack([a[m].float(), b[m].float()]))[0, 1])  # noqa: E731
    rows.append(("error correlation, same view drawn twice / neighbouring views at one pixel",
                 f"{corr(errors, errors_again, valid):.2f} / {corr(errors, other_view, both):.2f}"))

    # Artifact tokens and the independent noise.
    norms = tokens.norm(dim=-1).flatten(1)                                           # [B, g*g]
    ratio = norms / norms.median(dim=1, keepdim=True).values
    high = ratio > 3
    rows.append(("tokens above 3x their crop's median norm: share, mean norm ratio",
                 f"{float(high.float().mean()):.4f}, {float(ratio[high].mean()) if high.any() else 0:.1f}"))
    redraw, _ = crops(teacher, scene, corners, size)
    redraw_high = redraw.norm(dim=-1).flatten(1) > 3 * norms.median(dim=1, keepdim=True).values
    clean = ~(high | redraw_high).any(dim=1)                                         # no artifact in either draw
    per_token = (redraw - tokens).flatten(1, 2)[clean]
    per_token = per_token - per_token.mean(dim=1, keepdim=True)                      # the crop's shared part out
    count = per_token.shape[1]
    noise = per_token.norm(dim=-1).mean() / (2 * (count - 1) / count) ** 0.5        # one draw's, mean removed
    rows.append(("independent per-token noise / token norm (two draws of one crop)",
                 f"{float(noise / norms[clean].mean()):.3f}"))

    # The teacher's own 2D result.
    metrics = segmentation_metrics([scene.annotations[v] for v in scene.annotated_views],
                                   [teacher.pixel_scores(v) for v in scene.annotated_views])
    rows.append(("teacher's own 2D mIoU / accuracy, annotated views (%)",
                 f"{100 * metrics['miou']:.1f} / {100 * metrics['accuracy']:.1f}"))

    print(f"| property ({scene.name}, {size}-px crops, teacher.noise_model={cfg.teacher.noise_model}) | measured |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
