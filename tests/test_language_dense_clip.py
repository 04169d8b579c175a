"""Dense CLIP: the SCLIP / MaskCLIP last block against a naive per-token computation, positional-embedding
interpolation and the sliding window, on the tiny random CLIP."""

import math
import os

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from laser.language.dense_clip import DenseClip, correlative_attention, interpolate_pos_embed

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def clip():
    return instantiate(OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "conf", "clip", "tiny.yaml")))


def naive_last_block(block, x, mode):
    """The last block of LASER.md §3.2 / §3.3, one token and one head at a time."""
    width = x.shape[-1]
    heads = block.attn.num_heads
    head_dim = width // heads
    w_q, w_k, w_v = block.attn.in_proj_weight.split(width)
    b_q, b_k, b_v = block.attn.in_proj_bias.split(width)
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        normed = block.ln_1(x[b])
        q, k, v = normed @ w_q.T + b_q, normed @ w_k.T + b_k, normed @ w_v.T + b_v
        for i in range(x.shape[1]):
            mixed = []
            for h in range(heads):
                part = slice(h * head_dim, (h + 1) * head_dim)
                if mode == "sclip":
                    qq = torch.stack([q[i, part] @ q[j, part] for j in range(x.shape[1])]) / math.sqrt(head_dim)
                    kk = torch.stack([k[i, part] @ k[j, part] for j in range(x.shape[1])]) / math.sqrt(head_dim)
                    weights = torch.softmax(qq, 0) + torch.softmax(kk, 0)
                    mixed.append((weights[:, None] * v[:, part]).sum(0))
                else:
                    mixed.append(v[i, part])
            attended = block.attn.out_proj(torch.cat(mixed))
            out[b, i] = x[b, i] + attended
        out[b] = out[b] + block.mlp(block.ln_2(out[b]))
    return out


@pytest.mark.parametrize("mode", ["sclip", "maskclip"])
def test_last_block_matches_naive_per_token_formula(clip, mode):
    dense = DenseClip(clip, mode)
    x = torch.randn(2, 1 + 4 * 5, clip.model.visual.transformer.width)
    expected = naive_last_block(clip.model.visual.transformer.resblocks[-1], x, mode)
    torch.testing.assert_close(dense.last_block(x), expected, rtol=1e-4, atol=1e-5)


def test_correlative_attention_rows_sum_to_two():
    q, k = torch.randn(3, 2, 10, 8), torch.randn(3, 2, 10, 8)
    weights = correlative_attention(q, k, 8 ** -0.5)
    torch.testing.assert_close(weights.sum(-1), torch.full((3, 2, 10), 2.0))


def test_blocks_before_the_last_are_open_clips(clip):
    dense = DenseClip(clip)
    pixels = clip.normalize_images(torch.rand(2, 224, 224, 3))
    ours = dense.tokens_before_last_block(pixels)
    reference = clip.model.visual.forward_intermediates(
        pixels, indices=[len(clip.model.visual.transformer.resblocks) - 2], output_fmt="NLC", output_extra_tokens=True
    )
    expected = torch.cat([reference["image_intermediates_prefix"][0], reference["image_intermediates"][0]], dim=1)
    torch.testing.assert_close(ours, expected)


def test_output_features_are_ln_post_and_proj_of_the_last_block(clip):
    dense = DenseClip(clip)
    images = torch.rand(1, 224, 224, 3)
    tokens = dense.last_block(dense.tokens_before_last_block(clip.normalize_images(images)))
    expected = (clip.model.visual.ln_post(tokens[:, 1:]) @ clip.model.visual.proj).reshape(1, 14, 14, -1)
    torch.testing.assert_close(dense(images), expected)


def test_pos_embed_interpolation_identity_and_shapes(clip):
    pos = clip.model.visual.positional_embedding
    assert interpolate_pos_embed(pos, (14, 14), (14, 14)) is pos
    resized = interpolate_pos_embed(pos, (14, 14), (12, 20))
    assert resized.shape == (1 + 12 * 20, pos.shape[1])
    torch.testing.assert_close(resized[0], pos[0])
    # A constant embedding stays constant under bicubic resizing (up to rounding).
    constant = torch.ones(1 + 14 * 14, 4)
    torch.testing.assert_close(interpolate_pos_embed(constant, (14, 14), (7, 9)), torch.ones(1 + 63, 4))


def sclip_reference(pos_embed, rows, cols):
    """SCLIP's ``interpolate_pos_encoding`` (wangf3014/SCLIP clip/model.py), as the official Laser runs it."""
    native, dim = round((pos_embed.shape[0] - 1) ** 0.5), pos_embed.shape[1]
    grid = pos_embed[1:].reshape(1, native, native, dim).permute(0, 3, 1, 2)
    out = torch.nn.functional.interpolate(grid, scale_factor=((rows + 0.1) / native, (cols + 0.1) / native),
                                          mode="bicubic")
    return torch.cat([pos_embed[:1], out.permute(0, 2, 3, 1).reshape(-1, dim)])


@pytest.mark.parametrize("grid", [(12, 12), (16, 16), (12, 20)])
def test_scale_factor_interpolation_is_sclips_and_differs_from_resizing(clip, grid):
    pos = clip.model.visual.positional_embedding.detach()
    official = interpolate_pos_embed(pos, (14, 14), grid, "scale_factor")
    torch.testing.assert_close(official, sclip_reference(pos, *grid))
    resized = interpolate_pos_embed(pos, (14, 14), grid, "resize")
    relative = ((official - resized)[1:].norm(dim=-1) / resized[1:].norm(dim=-1)).mean()
    assert 1e-3 < relative < 0.2                                     # same grid, sampled at other positions
    assert interpolate_pos_embed(pos, (14, 14), (14, 14), "scale_factor") is pos
    # Rows and columns are not swapped: an embedding that varies along rows only still does.
    by_row = torch.cat([torch.zeros(1, 3), torch.arange(14.0).repeat_interleave(14)[:, None].expand(-1, 3)])
    out = interpolate_pos_embed(by_row, (14, 14), grid, "scale_factor")[1:, 0].reshape(grid)
    torch.testing.assert_close(out, out[:, :1].expand(grid))


def test_each_mode_defaults_to_its_official_interpolation(clip):
    assert DenseClip(clip, "sclip").pos_interpolation == "scale_factor"
    assert DenseClip(clip, "maskclip").pos_interpolation == "resize"
    assert DenseClip(clip, "sclip", pos_interpolation="resize").pos_interpolation == "resize"
    with pytest.raises(ValueError, match="pos_interpolation"):
        DenseClip(clip, "sclip", pos_interpolation="nearest")
    images = torch.rand(2, 192, 192, 3)
    assert not torch.allclose(DenseClip(clip)(images), DenseClip(clip, pos_interpolation="resize")(images))


def test_forward_shapes_and_size_check(clip):
    dense = DenseClip(clip)
    assert dense(torch.rand(3, 192, 256, 3)).shape == (3, 12, 16, 512)
    with pytest.raises(ValueError, match="multiple of the patch"):
        dense(torch.rand(1, 200, 224, 3))
    with pytest.raises(ValueError, match="mode"):
        DenseClip(clip, "other")


def test_sliding_window_equals_single_pass_when_window_covers_image(clip):
    dense = DenseClip(clip)
    image = torch.rand(224, 224, 3)
    torch.testing.assert_close(dense.sliding_window(image, 224, 112), dense(image[None])[0])
    small = torch.rand(160, 208, 3)  # smaller than the window: one clamped window
    torch.testing.assert_close(dense.sliding_window(small, 224, 112), dense(small[None])[0])


def test_sliding_window_averages_overlaps(clip):
    dense = DenseClip(clip)
    image = torch.rand(224, 336, 3)                  # windows at columns 0 and 112 (tokens 0-13 and 7-20)
    left, right = dense(torch.stack([image[:, :224], image[:, 112:]]))
    expected = torch.zeros(14, 21, 512)
    expected[:, :7], expected[:, 14:] = left[:, :7], right[:, 7:]
    expected[:, 7:14] = (left[:, 7:] + right[:, :7]) / 2
    torch.testing.assert_close(dense.sliding_window(image, 224, 112, batch_size=1), expected)


def test_sliding_window_pads_to_the_patch_grid(clip):
    dense = DenseClip(clip)
    assert dense.sliding_window(torch.rand(100, 250, 3), 64, 32).shape == (7, 16, 512)
    with pytest.raises(ValueError, match="multiples"):
        dense.sliding_window(torch.rand(64, 64, 3), 64, 24)
