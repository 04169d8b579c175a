"""Volume rendering as pure functions: sampling along rays, alpha compositing, chunked rendering.

Shapes: R rays, S samples per ray, P valid sample points (after culling), ``rays`` are ``[R, 6]`` (origin,
direction).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from laser.fields.base import RadianceField


def samples_per_ray(resolution: list[int], step_ratio: float, max_samples: int) -> int:
    """TensoRF's rule: about two samples per grid cell along the grid diagonal, capped."""
    return min(max_samples, int(torch.tensor(resolution, dtype=torch.float32).norm() / step_ratio))


def sample_along_rays(rays: Tensor, near: float, far: float, n_samples: int,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Evenly spaced ray parameters ``t`` ``[R, S]`` and points ``[R, S, 3]``.

    With a ``generator`` (training) one random offset in [0, (far - near) / S) is added to every ray of the call,
    the stratified jitter of TensoRF / Laser (LASER.md §1.5): the same shift for all rays of a chunk.
    """
    t = torch.linspace(near, far, n_samples, device=rays.device)
    if generator is not None:
        t = t + torch.rand(n_samples, generator=generator, device=generator.device).to(rays.device) * (
            (far - near) / n_samples)
    t = t.expand(rays.shape[0], n_samples)
    points = rays[:, None, :3] + rays[:, None, 3:] * t[..., None]
    return t, points


def compositing_weights(sigma: Tensor, deltas: Tensor) -> Tensor:
    """Rendering weights ``w_i = alpha_i * prod_{j<i} (1 - alpha_j)`` with ``alpha = 1 - exp(-sigma * delta)``.

    ``sigma`` and ``deltas`` are ``[R, S]``; the 1e-10 keeps the cumulative product differentiable behind
    opaque samples.
    """
    alpha = 1.0 - torch.exp(-sigma * deltas)
    ones = torch.ones_like(alpha[:, :1])
    transmittance = torch.cumprod(torch.cat([ones, 1.0 - alpha + 1e-10], dim=-1), dim=-1)[:, :-1]
    return alpha * transmittance


def composite(weights: Tensor, values: Tensor) -> Tensor:
    """Weighted sum along each ray: ``[R, S]`` x ``[R, S, D]`` -> ``[R, D]``."""
    return (weights[..., None] * values).sum(dim=1)


def composite_packed(weights: Tensor, values: Tensor, mask: Tensor) -> Tensor:
    """:func:`composite` for values given only where ``mask`` ``[R, S]`` is True, packed as ``[P, D]``.

    Wide per-point values (512-d semantics) would make the dense ``[R, S, D]`` tensor huge and mostly zeros.
    """
    ray = mask.nonzero()[:, 0]
    out = values.new_zeros(weights.shape[0], values.shape[-1])
    return out.index_add(0, ray, weights[mask][:, None] * values)


def composite_affine(weights: Tensor, values: Tensor, mask: Tensor, affine: Callable[[Tensor], Tensor]) -> Tensor:
    """``composite_packed(weights, affine(values), mask)`` for an affine map, composited on the narrow side first.

    ``sum_i w_i (A x_i + b) = A (sum_i w_i x_i) + (sum_i w_i) b``: the map runs once per ray instead of once per
    point, and the compositing (forward and backward) is over ``values``' width, not the map's output width. Equal up
    to float rounding (``tests/test_rendering.py`` compares it with the reference, values and gradients).

    Args:
        weights: ``[R, S]``; mask: ``[R, S]`` bool; values: ``[P, K]`` packed for the points of ``mask``.
        affine: an affine map ``[N, K] -> [N, D]`` (its offset ``b`` is ``affine(0)``).

    Returns:
        ``[R, D]``.
    """
    acc = composite_packed(weights, values.new_ones(len(values), 1), mask)            # [R, 1] sum of w_i
    offset = affine(values.new_zeros(1, values.shape[-1]))                             # [1, D] b
    out = affine(composite_packed(weights, values, mask)) + (acc - 1) * offset
    # A ray without points is exactly 0, as the reference gives it (b - b rounds to a tiny vector of any direction).
    return out.masked_fill(acc == 0, 0.0)


class _CompositeSigmoidLinear(torch.autograd.Function):
    """``out[r] = sum_{i in r} w_i sigmoid(W x_i + b)``, a block of points at a time, the ``[P, K]`` activations never
    stored: the backward recomputes each block's. Every pass over a block's activations then stays in cache, where
    the reference streams several ``[P, K]`` tensors through memory (at the paper's 184 000 points x 512 slots, each
    is 377 MB)."""

    @staticmethod
    def forward(ctx, values: Tensor, weight: Tensor, bias: Tensor, point_weights: Tensor, ray: Tensor,
                n_rays: int, block: int) -> Tensor:
        out = values.new_zeros(n_rays, weight.shape[0])
        for start in range(0, len(values), block):
            part = slice(start, start + block)
            activations = torch.sigmoid(torch.addmm(bias, values[part], weight.T))
            out.index_add_(0, ray[part], activations.mul_(point_weights[part, None]))
        ctx.save_for_backward(values, weight, bias, point_weights, ray)
        ctx.block = block
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        values, weight, bias, point_weights, ray = ctx.saved_tensors
        need_values, need_weight, need_bias, need_point_weights = ctx.needs_input_grad[:4]
        grad_values = torch.empty_like(values) if need_values else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        grad_bias = torch.zeros_like(bias) if need_bias else None
        grad_point_weights = torch.empty_like(point_weights) if need_point_weights else None
        for start in range(0, len(values), ctx.block):
            part = slice(start, start + ctx.block)
            activations = torch.sigmoid(torch.addmm(bias, values[part], weight.T))     # [B, K]
            grad_rays = grad.index_select(0, ray[part])                                # [B, K] d out / d out[ray_i]
            if need_point_weights:
                grad_point_weights[part] = (grad_rays * activations).sum(dim=1)
            # d out / d z_i = w_i g_ray(i) s_i (1 - s_i), in place over the block's two buffers
            grad_z = grad_rays.mul_(point_weights[part, None]).mul_(activations.sub_(activations * activations))
            if need_values:
                torch.mm(grad_z, weight, out=grad_values[part])
            if need_weight:
                grad_weight.addmm_(grad_z.T, values[part])
            if need_bias:
                grad_bias.add_(grad_z.sum(dim=0))
        return grad_values, grad_weight, grad_bias, grad_point_weights, None, None, None


def composite_sigmoid_linear(weights: Tensor, values: Tensor, mask: Tensor, linear: nn.Linear,
                             block: int | None = None, min_blocked: int = 2**22) -> Tensor:
    """``composite_packed(weights, sigmoid(linear(values)), mask)`` without storing the per-point activations.

    Wide activations of a narrow input (the label volume's 512 slots of 24 VM components) cost more to move through
    memory than to compute: this computes them a block of points at a time and again in the backward. Equal up to
    float rounding (``tests/test_rendering.py`` compares values and gradients with the reference).

    Args:
        weights: ``[R, S]``; mask: ``[R, S]`` bool; values: ``[P, C]`` packed for the points of ``mask``.
        linear: ``C -> K``.
        block: points per block; None: about 1 MiB of activations per block on CPU, one block on other devices
            (whose memory bandwidth makes the recomputation the larger cost).
        min_blocked: fewer activations (``P * K``) than this take the reference path, which keeps them: they stay
            in cache anyway, and the recomputation would cost more (at the synthetic block's 2944 x 512, 2
            threads: 8.0-9.8 ms against 8.2-13.1 ms per forward and backward, experiments/RESULTS.md).

    Returns:
        ``[R, K]``.
    """
    if len(values) * linear.out_features < min_blocked:
        return composite_packed(weights, torch.sigmoid(linear(values)), mask)
    if block is None:
        block = max(256, 2**18 // linear.out_features) if values.device.type == "cpu" else max(len(values), 1)
    ray = mask.nonzero()[:, 0]
    return _CompositeSigmoidLinear.apply(values, linear.weight, linear.bias, weights[mask], ray, weights.shape[0],
                                         block)


def ray_weights(field: RadianceField, rays: Tensor, near_far: tuple[float, float], n_samples: int,
                distance_scale: float = 25.0, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Samples along ``rays`` ``[R, 6]`` and their rendering weights from ``field``'s density.

    Only points inside the field's box (and its alpha mask) are queried: most samples of a converged scene are empty.
    Returns ``t [R, S]``, ``points [R, S, 3]``, unit ``viewdirs [R, S, 3]`` and ``weights [R, S]``.
    """
    near, far = near_far
    t, points = sample_along_rays(rays, near, far, n_samples, generator)
    direction_norm = rays[:, 3:].norm(dim=-1, keepdim=True)
    deltas = torch.cat([t[:, 1:] - t[:, :-1], torch.zeros_like(t[:, :1])], dim=-1) * direction_norm
    viewdirs = (rays[:, 3:] / direction_norm)[:, None].expand_as(points)
    valid = field.occupied(points.reshape(-1, 3)).reshape(t.shape)
    # No "if valid.any()": it would read a value back from the device; an empty selection renders as nothing.
    sigma = torch.zeros_like(t).masked_scatter(valid, field.density(points[valid]))
    return {"t": t, "points": points, "viewdirs": viewdirs,
            "weights": compositing_weights(sigma, deltas * distance_scale)}


def render_rays(field: RadianceField, rays: Tensor, near_far: tuple[float, float], n_samples: int,
                distance_scale: float = 25.0, weight_threshold: float = 1e-4, background: Tensor | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Render colour, depth and opacity of ``rays`` ``[R, 6]`` through ``field``.

    Only points whose weight exceeds ``weight_threshold`` are shaded: most samples are empty or occluded.
    Returns ``rgb [R, 3]``, ``depth [R]``, ``acc [R]`` and the samples' ``weights [R, S]``, ``points [R, S, 3]``
    and ``shaded [R, S]`` (the mask of points that were shaded).
    """
    samples = ray_weights(field, rays, near_far, n_samples, distance_scale, generator)
    t, points, weights = samples["t"], samples["points"], samples["weights"]
    shaded = weights > weight_threshold
    features = field.app_features(points[shaded])
    rgb = torch.zeros_like(points).masked_scatter(shaded[..., None], field.color(features, samples["viewdirs"][shaded]))
    acc = weights.sum(dim=-1)
    rgb_map = composite(weights, rgb)
    if background is not None:
        rgb_map = rgb_map + (1.0 - acc[:, None]) * background
    depth = (weights * t).sum(dim=-1) + (1.0 - acc) * near_far[1]
    return {"rgb": rgb_map, "depth": depth, "acc": acc, "weights": weights, "points": points, "shaded": shaded}


@torch.no_grad()
def render_in_chunks(render: Callable[[Tensor], dict[str, Tensor]], rays: Tensor, chunk: int,
                     keys: tuple[str, ...] | None = ("rgb", "depth", "acc")) -> dict[str, Tensor]:
    """Apply ``render`` to ``rays`` ``[R, 6]`` ``chunk`` rays at a time, keeping only ``keys`` (None: every entry
    of ``render``'s output, each one row per ray), so memory stays bounded for any image size."""
    parts: dict[str, list[Tensor]] = {}
    for block in rays.split(chunk):
        out = render(block)
        for k in (keys if keys is not None else out):
            parts.setdefault(k, []).append(out[k])
    return {k: torch.cat(v) for k, v in parts.items()}
