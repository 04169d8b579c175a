"""Dense CLIP features: one 512-d token per 16x16 block, from a modified last block of CLIP's ViT (LASER.md §3).

The wrapper runs open_clip's own modules (patch embedding, blocks 1..L-1, the last block's projections and MLP,
``ln_post``, ``proj``) and changes only how the last block mixes tokens:

* ``sclip`` (Laser's default, §3.2): correlative self-attention, per head
  ``A = softmax(q qᵀ · s) + softmax(k kᵀ · s)`` with ``s = head_dim^-1/2``; rows of ``A`` sum to 2, not averaged.
  ``x ← x + OutProj(A v)``, then ``x ← x + MLP(LN₂(x))``.
* ``maskclip`` (§3.3, Laser's ``lawn`` config): the value path, ``x ← x + OutProj(v)``, then the MLP residual.

Both then apply ``LN_post`` and ``proj`` to every token and drop the class token. Features are not normalised.
"""

from __future__ import annotations

import math

import laser  # noqa: F401  (laser.compat must run before open_clip imports torchvision)
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import Tensor, nn

from laser.language.clip_model import ClipModel

MODES = ("sclip", "maskclip")


def correlative_attention(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """SCLIP's correlative self-attention weights ``softmax(q qᵀ s) + softmax(k kᵀ s)``: ``[..., n, n]``.

    ``q``, ``k``: ``[..., n, d]``. Each row sums to 2. The forward pass uses the same formula through fused
    attention kernels (``A v = attn(q, q, v) + attn(k, k, v)``); this explicit form is the reference for tests.
    """
    query_term = torch.softmax(q @ q.transpose(-1, -2) * scale, dim=-1)
    key_term = torch.softmax(k @ k.transpose(-1, -2) * scale, dim=-1)
    return query_term + key_term


POS_INTERPOLATIONS = ("scale_factor", "resize")


def interpolate_pos_embed(pos_embed: Tensor, native_grid: tuple[int, int], grid: tuple[int, int],
                          method: str = "resize") -> Tensor:
    """Resize a ViT positional embedding ``[1 + h0*w0, C]`` to ``[1 + h*w, C]`` (class row kept as is).

    Bicubic, ``align_corners=False`` (§3.2-3.3), in one of two ways that give the same grid but sample it
    differently:

    * ``resize`` (MaskCLIP's): the output grid spans the native one exactly (``size=(h, w)``).
    * ``scale_factor`` (SCLIP's and so the official Laser's, DINO's ``+0.1`` trick): ``scale_factor=(h + 0.1) /
      h0``, whose floor is ``h`` output rows but whose sampling step is ``h0 / (h + 0.1)``; tokens differ from
      ``resize`` by about 1.5 % at 192 / 256 px crops (LASER.md rulings).

    The identity when ``grid == native_grid``: the embedding is returned untouched so the native size reproduces
    CLIP exactly (both official paths skip the interpolation there).
    """
    if method not in POS_INTERPOLATIONS:
        raise ValueError(f"positional-embedding interpolation must be one of {POS_INTERPOLATIONS}, not {method!r}")
    if tuple(grid) == tuple(native_grid):
        return pos_embed
    cls_row, patch_rows = pos_embed[:1], pos_embed[1:]
    width = pos_embed.shape[-1]
    patch_grid = patch_rows.reshape(1, native_grid[0], native_grid[1], width).permute(0, 3, 1, 2)
    # Interpolate in fp32: bicubic on half tensors is not implemented on every device.
    if method == "resize":
        resized = F.interpolate(patch_grid.float(), size=grid, mode="bicubic", align_corners=False)
    else:
        factor = tuple((g + 0.1) / g0 for g, g0 in zip(grid, native_grid))
        resized = F.interpolate(patch_grid.float(), scale_factor=factor, mode="bicubic", align_corners=False)
    resized = resized.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width)
    return torch.cat([cls_row, resized], dim=0)


class DenseClip(nn.Module):
    """Dense features of CLIP's vision transformer with an SCLIP or MaskCLIP last block.

    Args:
        clip: the loaded CLIP (weights frozen, shared, not copied).
        mode: ``sclip`` (correlative self-attention) or ``maskclip`` (value path).
        pos_interpolation: how crops other than CLIP's native size get their positional embedding
            (:func:`interpolate_pos_embed`); null: each mode's official way, ``scale_factor`` for SCLIP, ``resize``
            for MaskCLIP.
    """

    def __init__(self, clip: ClipModel, mode: str = "sclip", pos_interpolation: str | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"dense CLIP mode must be one of {MODES}, not {mode!r}")
        visual = clip.model.visual
        last = visual.transformer.resblocks[-1]
        if not isinstance(last, ResidualAttentionBlock) or not isinstance(last.attn, nn.MultiheadAttention):
            raise TypeError(f"dense CLIP needs a plain open_clip ViT, not one whose blocks are {type(last).__name__}")
        if visual.attn_pool is not None or not visual.transformer.batch_first:
            raise TypeError("dense CLIP supports open_clip ViTs with class-token pooling and batch-first blocks")
        self.clip = clip
        self.visual = visual
        self.mode = mode
        self.pos_interpolation = pos_interpolation or ("scale_factor" if mode == "sclip" else "resize")
        if self.pos_interpolation not in POS_INTERPOLATIONS:
            raise ValueError(f"pos_interpolation must be one of {POS_INTERPOLATIONS} or null, "
                             f"not {pos_interpolation!r}")

    @property
    def patch_size(self) -> int:
        return self.clip.patch_size

    @property
    def native_grid(self) -> tuple[int, int]:
        return tuple(self.visual.grid_size)

    def embed(self, pixels: Tensor) -> Tensor:
        """Normalised images ``[B, 3, H, W]`` (H, W multiples of the patch) -> tokens ``[B, 1 + h*w, width]``
        entering block 1, with the positional embedding resized to the ``h x w`` grid."""
        visual = self.visual
        patches = visual.conv1(pixels)                                      # [B, width, h, w]
        grid = (patches.shape[2], patches.shape[3])
        tokens = patches.flatten(2).transpose(1, 2)                         # [B, h*w, width]
        cls = visual.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        pos = interpolate_pos_embed(visual.positional_embedding, self.native_grid, grid, self.pos_interpolation)
        return visual.ln_pre(tokens + pos.to(tokens.dtype))

    def last_block(self, x: Tensor) -> Tensor:
        """The modified last block on ``[B, n, width]`` tokens -> ``[B, n, width]``."""
        block = self.visual.transformer.resblocks[-1]
        attn = block.attn
        batch, n, width = x.shape
        heads = attn.num_heads
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = (t.reshape(batch, n, heads, width // heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        if self.mode == "sclip":
            # Fused kernels: softmax(q qᵀ s) v + softmax(k kᵀ s) v, with s = head_dim^-1/2 (their default scale).
            mixed = F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)
        else:
            mixed = v
        out = attn.out_proj(mixed.transpose(1, 2).reshape(batch, n, width))
        x = x + block.ls_1(out)
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def tokens_before_last_block(self, pixels: Tensor) -> Tensor:
        """Normalised images ``[B, 3, H, W]`` -> tokens ``[B, 1 + h*w, width]`` after blocks 1..L-1 (unchanged)."""
        x = self.embed(pixels)
        for block in self.visual.transformer.resblocks[:-1]:
            x = block(x)
        return x

    def forward(self, images: Tensor) -> Tensor:
        """Images ``[B, H, W, 3]`` in [0, 1], H and W multiples of the patch size -> ``[B, H/16, W/16, D]`` fp32.

        Runs under the CLIP's autocast (fp16 by default on CUDA) and without gradients: CLIP is frozen.
        """
        batch, height, width, _ = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"dense CLIP input {height}x{width} is not a multiple of the patch size {p}")
        pixels = self.clip.normalize_images(images.to(self.clip.device, torch.float32))
        with torch.no_grad(), self.clip.autocast():
            x = self.last_block(self.tokens_before_last_block(pixels))
            features = self.visual.ln_post(x[:, 1:]) @ self.visual.proj
        return features.float().reshape(batch, height // p, width // p, -1)

    def sliding_window(self, image: Tensor, window: int = 224, stride: int = 112, batch_size: int = 16) -> Tensor:
        """Dense features of a whole image by overlapping windows, averaged where they overlap.

        Args:
            image: ``[H, W, 3]`` in [0, 1], any size. It is padded at the bottom/right by edge replication to a
                multiple of the patch size, so that every window sits on one global token grid.
            window: window side in pixels (multiple of the patch size); clamped to the image.
            stride: step between windows in pixels (multiple of the patch size). The last window in each
                direction is aligned to the image border.
            batch_size: windows per forward pass.

        Returns:
            ``[ceil(H/16), ceil(W/16), D]`` fp32; token ``(i, j)`` covers pixels ``[16i, 16i+16) x [16j, 16j+16)``.
        """
        p = self.patch_size
        if window % p or stride % p or stride <= 0:
            raise ValueError(f"window {window} and stride {stride} must be positive multiples of the patch size {p}")
        height, width, _ = image.shape
        rows, cols = math.ceil(height / p), math.ceil(width / p)
        padded = F.pad(image.permute(2, 0, 1)[None], (0, cols * p - width, 0, rows * p - height), mode="replicate")
        padded = padded[0].permute(1, 2, 0)
        win_rows, win_cols = min(window // p, rows), min(window // p, cols)
        step = stride // p
        boxes = [(r, c) for r in _starts(rows, win_rows, step) for c in _starts(cols, win_cols, step)]
        total = torch.zeros(rows, cols, self.clip.embed_dim, device=self.clip.device)
        count = torch.zeros(rows, cols, 1, device=self.clip.device)
        for first in range(0, len(boxes), batch_size):
            chunk = boxes[first : first + batch_size]
            crops = torch.stack([padded[r * p : (r + win_rows) * p, c * p : (c + win_cols) * p] for r, c in chunk])
            features = self(crops)
            for (r, c), feature in zip(chunk, features):
                total[r : r + win_rows, c : c + win_cols] += feature
                count[r : r + win_rows, c : c + win_cols] += 1
        return total / count


def _starts(length: int, window: int, step: int) -> list[int]:
    """Window start indices covering ``[0, length)``: every ``step``, plus one aligned to the end if needed."""
    starts = list(range(0, length - window + 1, step))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts
