"""Forward-facing scenes in the LLFF / 3D-OVS layout (LASER.md §1).

```
<root>/images/ or images_<k>/     photos, sorted file name = view index
<root>/poses_bounds.npy           (N, 17): LLFF 3x5 [down, right, back, centre, hwf] + near, far
<root>/segmentations/classes.txt  optional: one class prompt per line
<root>/segmentations/<view>/<prompt>.png   binary masks of the annotated views (<view>: "03" or "test_view3")
<root>/labels/<stem>.png          optional: per-pixel index into classes.txt as written (0 = unlabelled)
```
Semantics follow the official loader (axis order, re-centring, 0.75 * min(near) scaling, NDC, alphabetical
class order, masks positive only where exactly 255) but image sizes come from the files and every problem is
reported with the file it concerns.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from laser.data.rays import llff_to_opengl, recenter_poses
from laser.data.scene import Scene
from laser.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".PNG")
_VIEW_FOLDER = re.compile(r"^(?:test_view)?(\d+)$")


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(folder, "image folder not found")
    paths = sorted(p for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return paths


def read_image(path: Path, size: tuple[int, int] | None = None, resample=Image.LANCZOS,
               source_size: tuple[int, int] | None = None) -> np.ndarray:
    """An image as ``[H, W, C]`` uint8, resized to ``size`` = (W, H) when given. ``source_size``: the (W, H) every
    image of the scene has; a file of another size is refused (resized, it would no longer match its camera)."""
    try:
        with Image.open(path) as img:
            if source_size is not None and img.size != tuple(source_size):
                raise DataError(path, f"image is {img.size[0]}x{img.size[1]} but the scene's other images are "
                                      f"{source_size[0]}x{source_size[1]}: every view of a scene must have one size")
            img.load()
            if size is not None and img.size != size:
                img = img.resize(size, resample)
            return np.asarray(img)
    except (OSError, SyntaxError) as err:
        raise DataError(path, f"cannot read image ({err})") from err


def read_poses_bounds(path: Path, num_images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``poses_bounds.npy`` -> LLFF poses ``[N, 3, 4]``, hwf ``[3]`` of the pose file, bounds ``[N, 2]``."""
    if not path.is_file():
        raise DataError(path, "poses file not found (expected LLFF poses_bounds.npy)")
    try:
        array = np.load(path)
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot read as a numpy array ({err})") from err
    if array.ndim != 2 or array.shape[1] != 17:
        raise DataError(path, f"expected shape (N, 17), found {tuple(array.shape)}")
    if array.shape[0] != num_images:
        raise DataError(path, f"{array.shape[0]} poses for {num_images} images")
    if not np.isfinite(array).all():
        raise DataError(path, "contains NaN or infinite values")
    poses = array[:, :15].reshape(-1, 3, 5)
    bounds = array[:, 15:].astype(np.float64)
    if (bounds <= 0).any() or (bounds[:, 0] >= bounds[:, 1]).any():
        raise DataError(path, "near/far bounds must be positive with near < far")
    return poses[:, :, :4].astype(np.float64), poses[0, :, 4].astype(np.float64), bounds


def over_background(image: np.ndarray, background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """An RGB or RGBA float image ``[H, W, 3 | 4]`` in [0, 1] -> RGB ``[H, W, 3]``: an alpha channel (straight, as
    PNG stores it) is composited over ``background``."""
    if image.shape[2] == 3:
        return image
    return image[..., :3] * image[..., 3:] + np.asarray(background, np.float32) * (1 - image[..., 3:])


def read_classes(path: Path) -> list[str]:
    """Class prompts of ``classes.txt`` as written (stripped, blank lines dropped)."""
    if not path.is_file():
        raise DataError(path, "classes file not found")
    classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not classes:
        raise DataError(path, "no class prompts (the file is empty)")
    if len(set(classes)) != len(classes):
        raise DataError(path, "a class prompt appears twice")
    return classes


def read_annotations(seg_dir: Path, classes: list[str], num_images: int,
                     size: tuple[int, int], source_size: tuple[int, int]) -> dict[int, torch.Tensor]:
    """Masks of every annotated view as ``{view: [H, W, C] bool}`` (C in sorted class order)."""
    annotations: dict[int, torch.Tensor] = {}
    width, height = size
    for folder in sorted(p for p in seg_dir.iterdir() if p.is_dir()):
        match = _VIEW_FOLDER.match(folder.name)
        if match is None:
            raise DataError(folder, "annotated-view folder must be named by the view index ('03' or 'test_view3')")
        view = int(match.group(1))
        if view >= num_images:
            raise DataError(folder, f"view index {view} but the scene has {num_images} images")
        if view in annotations:
            raise DataError(folder, f"view {view} is annotated twice")
        masks = torch.zeros(height, width, len(classes), dtype=torch.bool)
        for mask_path in sorted(p for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES):
            if mask_path.stem not in classes:
                raise DataError(mask_path, f"mask name is not a class of classes.txt ({', '.join(classes)})")
            with Image.open(mask_path) as probe:
                mask_size = probe.size
            if abs(mask_size[0] / mask_size[1] - source_size[0] / source_size[1]) > 0.01:
                raise DataError(mask_path, f"mask is {mask_size[0]}x{mask_size[1]} but the images are "
                                           f"{source_size[0]}x{source_size[1]}")
            mask = read_image(mask_path, size, Image.NEAREST)
            if mask.ndim == 3:
                mask = np.asarray(Image.fromarray(mask).convert("L"))
            masks[..., classes.index(mask_path.stem)] = torch.from_numpy(mask == 255)
        annotations[view] = masks
    if not annotations:
        raise DataError(seg_dir, "classes.txt is present but no annotated-view folder")
    return annotations


def read_labels(label_dir: Path, image_paths: list[Path], size: tuple[int, int],
                written: list[str], classes: list[str]) -> torch.Tensor:
    """``labels/<stem>.png`` -> ``[N, H, W]`` int64 sorted-class index, -1 unlabelled."""
    # The files index classes.txt as written (1-based); everything else uses the sorted order.
    remap = torch.tensor([-1] + [classes.index(c) for c in written])
    maps = []
    for image_path in image_paths:
        path = label_dir / f"{image_path.stem}.png"
        if not path.is_file():
            raise DataError(path, "label map missing (labels/ must hold one map per image)")
        raw = torch.from_numpy(read_image(path, size, Image.NEAREST).astype(np.int64))
        if raw.ndim != 2:
            raise DataError(path, "label map must be single-channel")
        if raw.max() > len(written):
            raise DataError(path, f"label {int(raw.max())} but classes.txt has {len(written)} classes")
        maps.append(remap[raw])
    return torch.stack(maps)


def read_segmentation(root: Path, image_paths: list[Path], size: tuple[int, int], source_size: tuple[int, int],
                      load_labels: bool = True) -> tuple[list[str], dict[int, torch.Tensor], torch.Tensor | None]:
    """The sorted class prompts, annotated-view masks and per-pixel labels of a scene folder, any layout.

    ``root/segmentations/`` (the 3D-OVS layout: ``classes.txt`` and one mask folder per annotated view) with, when
    ``load_labels``, ``root/labels/`` (one label map per image, the synthetic scenes'); else ``root/classes.txt``
    alone (prompts without masks: a capture to query, not to score); else nothing.
    """
    seg_dir = root / "segmentations"
    if seg_dir.is_dir():
        written = read_classes(seg_dir / "classes.txt")
        classes = sorted(written)
        annotations = read_annotations(seg_dir, classes, len(image_paths), size, source_size)
        labels = None
        if load_labels and (root / "labels").is_dir():
            labels = read_labels(root / "labels", image_paths, size, written, classes)
        return classes, annotations, labels
    if (root / "classes.txt").is_file():
        return sorted(read_classes(root / "classes.txt")), {}, None
    return [], {}, None


def load_llff_scene(root: str | Path, downsample: float = 1.0, image_dir: str = "images",
                    near_far: tuple[float, float] = (0.0, 1.0),
                    aabb: tuple[tuple[float, ...], tuple[float, ...]] = ((-1.5, -1.67, -1.0), (1.5, 1.67, 1.0)),
                    holdout_every: int = 0, load_labels: bool = True, name: str | None = None) -> Scene:
    """Load a forward-facing scene at ``1/downsample`` of its image files' resolution, rays in NDC.

    ``holdout_every = k > 0`` holds out views 0, k, 2k... for testing (the LLFF protocol); ``0`` trains on every
    view, as the 3D-OVS protocol does, and tests on view 0 (stage 1) or on the annotated views (segmentation).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "scene folder not found")
    image_paths = list_images(root / image_dir)
    poses, hwf, bounds = read_poses_bounds(root / "poses_bounds.npy", len(image_paths))

    with Image.open(image_paths[0]) as probe:
        source_size = probe.size                                    # (W, H) of the files
    pose_h, pose_w, pose_focal = hwf
    if abs(source_size[0] / source_size[1] - pose_w / pose_h) > 0.01:
        raise DataError(image_paths[0], f"image is {source_size[0]}x{source_size[1]} but poses_bounds.npy "
                                        f"says {pose_w:.0f}x{pose_h:.0f} (different aspect ratio)")
    size = (int(source_size[0] / downsample), int(source_size[1] / downsample))
    fx, fy = float(pose_focal * size[0] / pose_w), float(pose_focal * size[1] / pose_h)

    images = []
    for path in image_paths:
        image = read_image(path, size, source_size=source_size)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise DataError(path, f"expected an RGB image, found shape {image.shape}")
        images.append(torch.from_numpy(image[..., :3].copy()))
    images = torch.stack(images).float() / 255.0

    c2w = recenter_poses(llff_to_opengl(poses))
    # Scale so the nearest surface sits a little beyond the NDC near plane (z = -1).
    scale = 1.0 / (0.75 * bounds.min())
    c2w[:, :, 3] *= scale

    classes, annotations, labels = read_segmentation(root, image_paths, size, source_size, load_labels)

    views = list(range(len(image_paths)))
    test_views = views[::holdout_every] if holdout_every > 0 else [0]
    train_views = [v for v in views if v not in test_views] if holdout_every > 0 else views
    return Scene(
        name=name or root.name, images=images, c2w=torch.from_numpy(c2w).float(), fx=fx, fy=fy, ndc=True,
        near_far=tuple(near_far), aabb=torch.tensor(aabb, dtype=torch.float32),
        image_paths=[str(p) for p in image_paths], train_views=train_views, test_views=test_views,
        classes=classes, annotations=annotations, labels=labels,
    )
