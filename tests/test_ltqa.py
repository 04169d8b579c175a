"""Low-rank transient query attention (LASER.md §6)."""

import pytest
import torch

from laser.modules.ltqa import LTQA


@pytest.mark.parametrize(("dim", "count"), [(48, 105216), (64, 143360)])
def test_parameter_counts_and_default_agents(dim, count):
    ltqa = LTQA(dim=dim)
    assert sum(p.numel() for p in ltqa.parameters()) == count
    assert ltqa.queries.shape == (3 * dim, dim)
    # trunc_normal_(std=0.02) cuts at +-2 absolute (as timm's does), so it is a plain N(0, 0.02^2) in practice.
    assert abs(ltqa.queries.std().item() - 0.02) < 0.002


def test_output_rank_is_at_most_d():
    torch.manual_seed(0)
    out = LTQA(dim=48).double()(torch.randn(600, 512, dtype=torch.float64))
    assert out.shape == (600, 512)
    assert torch.linalg.matrix_rank(out) == 48


def test_matches_a_loop_over_points_and_agents():
    torch.manual_seed(0)
    ltqa = LTQA(in_dim=16, dim=4, num_queries=5).double()
    x = torch.randn(9, 16, dtype=torch.float64)
    w_q, w_k, w_v = ltqa.qkv.weight.split(4)                # nn.Linear weights are [out, in]
    agents, w_u = ltqa.queries, ltqa.out.weight
    q, k, v = x @ w_q.T, x @ w_k.T, x @ w_v.T
    pooled = []                                             # A2 V: each agent pools over all points
    for m in range(5):
        scores = torch.stack([torch.exp(agents[m] @ k[n]) for n in range(9)])
        pooled.append(sum(scores[n] / scores.sum() * v[n] for n in range(9)))
    expected = []
    for n in range(9):                                      # A1: each point reads the agents
        scores = torch.stack([torch.exp(q[n] @ agents[m]) for m in range(5)])
        z = sum(scores[m] / scores.sum() * pooled[m] for m in range(5)) + q[n]
        expected.append(w_u @ z)
    torch.testing.assert_close(ltqa(x), torch.stack(expected))


def test_output_depends_on_the_chunk():
    # The specified behaviour: A2 normalises over every point of the call, so a point's output changes with the
    # other points in its render chunk (§6; chunk size is therefore one config value for training and evaluation).
    torch.manual_seed(0)
    ltqa = LTQA(dim=8)
    x = torch.randn(50, 512)
    assert not torch.allclose(ltqa(x[:20]), ltqa(x)[:20], atol=1e-5)


def test_empty_chunk_and_gradients_reach_every_parameter():
    ltqa = LTQA(dim=8)
    assert ltqa(torch.zeros(0, 512)).shape == (0, 512)
    ltqa(torch.randn(30, 512)).square().sum().backward()
    for name, p in ltqa.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_mix_after_a_linear_map_matches_mixing_its_output():
    # The fused path (W_qkv W as one map) against the reference (the in_dim-wide linear output, then W_qkv), in
    # values and in the gradients of the input and of every parameter; with and without a bias, and no points.
    torch.manual_seed(0)
    ltqa = LTQA(in_dim=40, dim=6).double()
    for bias in (True, False):
        linear = torch.nn.Linear(12, 40, bias=bias).double()
        h = torch.randn(30, 12, dtype=torch.float64, requires_grad=True)
        target = torch.randn(30, 6, dtype=torch.float64)
        results = []
        for fused in (True, False):
            h.grad = None
            ltqa.zero_grad()
            linear.zero_grad()
            out = ltqa.mix_after(linear, h) if fused else ltqa.mix(linear(h))
            (out * target).sum().backward()
            grads = [h.grad.clone(), *(p.grad.clone() for p in (*ltqa.parameters(), *linear.parameters())
                                       if p.grad is not None)]
            results.append((out.detach(), grads))
        (fast, fast_grads), (reference, reference_grads) = results
        torch.testing.assert_close(fast, reference)
        assert len(fast_grads) == len(reference_grads)
        for a, b in zip(fast_grads, reference_grads):
            torch.testing.assert_close(a, b)
    assert ltqa.mix_after(linear, torch.zeros(0, 12, dtype=torch.float64)).shape == (0, 6)
