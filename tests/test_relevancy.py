"""3D-OVS's relevancy maps and Jensen-Shannon divergence against their definitions."""

import math

import torch
import torch.nn.functional as F

from laser.modules.relevancy import js_divergence, relevancy_maps


def kl(p, q):
    return (p * (p / q).log()).sum(-1)


def test_js_divergence_is_the_mean_kl_to_the_mixture():
    generator = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(5, 4, generator=generator), dim=-1)
    q = torch.softmax(torch.randn(5, 4, generator=generator), dim=-1)
    m = (p + q) / 2
    expected = 0.5 * kl(p, m) + 0.5 * kl(q, m)
    torch.testing.assert_close(js_divergence(p.log(), q.log()), expected)
    torch.testing.assert_close(js_divergence(q.log(), p.log()), expected)              # symmetric
    torch.testing.assert_close(js_divergence(p.log(), p.log()), torch.zeros(5))        # zero for equal inputs
    # Disjoint supports reach the maximum, log 2.
    sharp = torch.log_softmax(torch.tensor([[60.0, 0.0], [0.0, 60.0]]), dim=-1)
    torch.testing.assert_close(js_divergence(sharp[:1], sharp[1:]), torch.tensor([math.log(2.0)]))


def test_js_divergence_broadcasts_to_all_pairs():
    log_p = torch.log_softmax(torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    pairs = js_divergence(log_p[:, :, None], log_p[:, None, :])
    assert pairs.shape == (2, 3, 3)
    torch.testing.assert_close(pairs[1, 0, 2], js_divergence(log_p[1, 0], log_p[1, 2]))


def test_relevancy_maps_are_min_max_normalised_per_scale_and_class():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(3, 8, 5, 6, generator=generator) * 4
    text = F.normalize(torch.randn(2, 8, generator=generator), dim=-1)
    maps = relevancy_maps(features, text)
    assert maps.shape == (3, 2, 5, 6)
    cosine = F.cosine_similarity(features[1, :, 2, 3], text[0], dim=0)
    raw = torch.einsum("d,dhw->hw", text[0], F.normalize(features[1], dim=0))
    torch.testing.assert_close(maps[1, 0, 2, 3], (cosine - raw.min()) / (raw.max() - raw.min()))
    torch.testing.assert_close(maps.amin(dim=(2, 3)), torch.zeros(3, 2))
    torch.testing.assert_close(maps.amax(dim=(2, 3)), torch.ones(3, 2))
    assert (relevancy_maps(torch.ones(1, 8, 2, 2), text) == 0).all()                   # a constant map: 0, not NaN
