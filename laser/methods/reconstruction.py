"""Stage 1: fit a radiance field to the scene's photos (TensoRF schedule, LASER.md §2)."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from laser.data.scene import Scene
from laser.evaluation.metrics import psnr, ssim
from laser.evaluation.pictures import to_uint8
from laser.evaluation.tables import write_atomic
from laser.fields.base import RadianceField
from laser.fields.tensorf import log_spaced_voxels
from laser.methods.optimizer import adam, load_adam_state
from laser.rendering import render_in_chunks, render_rays, samples_per_ray


def depth_to_uint8(depth: torch.Tensor) -> np.ndarray:
    """Depth ``[H, W]`` to a grey image, near = bright, normalised over the image's range."""
    lo, hi = depth.min(), depth.max()
    grey = 1 - (depth - lo) / (hi - lo).clamp(min=1e-8)
    return to_uint8(grey[..., None].expand(*depth.shape, 3))


class Reconstruction:
    """Photometric training of a radiance field on random rays of the training views.

    Schedule (TensoRF): learning rates decay by ``lr_decay_ratio`` over ``n_iters``; the grid is upsampled at
    ``upsample_steps`` (log-spaced voxel counts up to ``n_voxels_final``), each time with a fresh optimiser at the
    initial rates; at ``alpha_mask_steps`` empty space is culled, and at the first of them the box shrinks to the
    occupied region. Total-variation weights decay with the learning rate.
    """

    name = "reconstruction"

    def __init__(self, scene: Scene, field: RadianceField, device: str | torch.device = "cpu",
                 n_iters: int = 30000, batch_size: int = 2048, lr_grid: float = 0.02, lr_network: float = 1e-4,
                 lr_decay_ratio: float = 0.1, n_voxels_init: int = 2097156, n_voxels_final: int = 262144000,
                 upsample_steps: tuple[int, ...] = (2000, 3000, 4000, 5500),
                 alpha_mask_steps: tuple[int, ...] = (2500,), alpha_mask_threshold: float = 1e-4,
                 tv_weight_density: float = 1.0, tv_weight_app: float = 1.0, tv_scale: float = 1e-2,
                 step_ratio: float = 0.5, max_samples: int = 1_000_000, distance_scale: float = 25.0,
                 weight_threshold: float = 1e-4, random_background: float = 0.5, eval_chunk: int = 4096,
                 seed: int = 20211202):
        self.scene = scene
        self.device = torch.device(device)
        self.field = field.to(self.device)
        self.field.set_resolution(n_voxels_init)        # the schedule owns the grid size
        self.n_iters = n_iters
        self.batch_size = batch_size
        self.lr_grid, self.lr_network = lr_grid, lr_network
        self.lr_factor = lr_decay_ratio ** (1.0 / n_iters)
        self.upsample_voxels = dict(zip(upsample_steps, log_spaced_voxels(n_voxels_init, n_voxels_final,
                                                                          len(upsample_steps))))
        self.alpha_mask_steps = tuple(alpha_mask_steps)
        self.alpha_mask_threshold = alpha_mask_threshold
        self.tv_weights = {"tv_density": tv_weight_density * tv_scale, "tv_app": tv_weight_app * tv_scale}
        self.step_ratio, self.max_samples = step_ratio, max_samples
        self.distance_scale, self.weight_threshold = distance_scale, weight_threshold
        self.random_background = random_background
        self.eval_chunk = eval_chunk

        rays, rgbs = scene.all_rays(scene.train_views)
        self.rays, self.rgbs = rays.to(self.device), rgbs.to(self.device)
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = self._new_optimizer()

    # --- what the loop calls -----------------------------------------------------------------------------------
    def identity(self) -> dict:
        """What a checkpoint of this stage must match to be continued or reused."""
        return {"stage": self.name, "scene": self.scene.name, "views": self.scene.num_views,
                "image_size": [self.scene.height, self.scene.width], "field": type(self.field).__name__,
                "n_iters": self.n_iters}

    @property
    def n_samples(self) -> int:
        return samples_per_ray(self.field.grid_resolution(), self.step_ratio, self.max_samples)

    def render(self, rays: torch.Tensor, train: bool = False, background: torch.Tensor | None = None) -> dict:
        return render_rays(self.field, rays, self.scene.near_far, self.n_samples, self.distance_scale,
                           self.weight_threshold, background, self.generator if train else None)

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One step; the figures are 0-dim tensors on the device (the loop reads them when it logs)."""
        self.field.train()
        index = torch.randint(len(self.rays), (self.batch_size,), generator=self.generator).to(self.device)
        background = None
        if self.scene.white_background or torch.rand(1, generator=self.generator).item() < self.random_background:
            background = torch.ones(3, device=self.device)
        out = self.render(self.rays[index], train=True, background=background)
        mse = torch.mean((out["rgb"] - self.rgbs[index]) ** 2)
        decay = self.lr_factor ** step
        regularizers = self.field.regularization()
        loss = mse + sum(self.tv_weights.get(k, 0.0) * decay * v for k, v in regularizers.items())

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        for group in self.optimizer.param_groups:
            group["lr"] *= self.lr_factor
        self._schedule(step)
        mse = mse.detach()
        return {"loss": loss.detach(), "mse": mse, "psnr": -10.0 * torch.log10(mse.clamp(min=1e-10)),
                **{k: v.detach() for k, v in regularizers.items()}}

    def check_finite(self) -> None:
        """Nothing to report: stage 1 steps unguarded, and the loop checks the figures it reads."""

    @torch.no_grad()
    def render_view(self, view: int) -> dict[str, torch.Tensor]:
        """Full-image render of one view: ``rgb [H, W, 3]``, ``depth [H, W]``, ``acc [H, W]``."""
        self.field.eval()
        background = torch.ones(3, device=self.device) if self.scene.white_background else None
        with self.field.frozen():
            out = render_in_chunks(lambda rays: self.render(rays, background=background),
                                   self.scene.rays(view).to(self.device), self.eval_chunk)
        h, w = self.scene.height, self.scene.width
        return {k: v.reshape(h, w, -1).squeeze(-1) for k, v in out.items()}

    def evaluate(self, out_dir: str | Path, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Render the test views into ``out_dir`` (colour and depth PNGs) and return mean PSNR and SSIM, with the
        ``extra`` columns (the training cost) joined; all of it goes to ``metrics.json``, written once."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        scores = []
        with self.field.frozen():                  # one block: the field's caches serve every view
            for view in self.scene.test_views:
                out = self.render_view(view)
                target = self.scene.images[view].to(self.device)
                scores.append((psnr(out["rgb"], target), ssim(out["rgb"], target)))
                iio.imwrite(out_dir / f"rgb_{view:03d}.png", to_uint8(out["rgb"]))
                iio.imwrite(out_dir / f"depth_{view:03d}.png", depth_to_uint8(out["depth"]))
        metrics = {"test_psnr": float(np.mean([s[0] for s in scores])),
                   "test_ssim": float(np.mean([s[1] for s in scores])), **(extra or {})}
        write_atomic(out_dir / "metrics.json",
                     json.dumps({"metrics": metrics, "views": self.scene.test_views}, indent=2))
        return metrics

    def state_dict(self) -> dict:
        return {"field_meta": self.field.state_dict_meta(), "field": self.field.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.field.prepare_for_load(state["field_meta"])
        self.field.load_state_dict(state["field"])
        self.field.to(self.device)
        self.optimizer = self._new_optimizer()
        load_adam_state(self.optimizer, state["optimizer"], self.field)
        self.generator.set_state(state["generator"])

    # --- schedule ------------------------------------------------------------------------------------------------
    def _new_optimizer(self, lrs: tuple[float, float] | None = None) -> torch.optim.Optimizer:
        lr_grid, lr_network = lrs if lrs is not None else (self.lr_grid, self.lr_network)
        return adam(self.field.param_groups(lr_grid, lr_network))

    def _schedule(self, step: int) -> None:
        """Grid changes after the update of ``step`` (TensoRF applies them at the end of the iteration)."""
        if step in self.alpha_mask_steps:
            box = self.field.update_alpha_mask(self.field.cell_size() * self.step_ratio, self.alpha_mask_threshold)
            if step == self.alpha_mask_steps[0]:
                self.field.shrink(box)
                # Shrinking replaces the grid tensors. TensoRF keeps the old optimizer, which then updates
                # tensors no longer in the model until the next upsampling (500 steps in Laser's schedule);
                # we rebuild it at the current learning rates.
                self.optimizer = self._new_optimizer(tuple(g["lr"] for g in self.optimizer.param_groups))
        if step in self.upsample_voxels and self.field.set_resolution(self.upsample_voxels[step]):
            self.optimizer = self._new_optimizer()
