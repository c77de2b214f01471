"""Channel scores at Qwen2.5-3B's shape (issue 5, section 5): fp32 on CPU, all 576 heads
x 200 neurons. Targets: "paper" <= 1 s; the per-neuron x per-head composition matrix <= 2 s;
against the naive torch approach that forms each head's d_model x d_model OV matrix.

    python -m pytest benchmarks/bench_analysis.py --benchmark-only -q -p no:cacheprovider

Random weights of the real shapes (36 layers, 16 query / 2 KV heads, d_head 128,
d_model 2048): the scores only read W_V, W_O and the neurons' gate/up rows, so no 3B
model needs to be built."""
import pytest
import torch

from verilens.analysis.channel import composition_scores, paper_scores

L, H, KV, DH, D, N = 36, 16, 2, 128, 2048, 200


@pytest.fixture(scope="module")
def weights():
    g = torch.Generator().manual_seed(0)
    W_V = torch.randn(L, KV, D, DH, generator=g) / D ** 0.5
    W_O = torch.randn(L, H, DH, D, generator=g) / DH ** 0.5
    G = torch.randn(N, D, generator=g) / D ** 0.5
    U = torch.randn(N, D, generator=g) / D ** 0.5
    return W_V, W_O, G, U


def paper_naive(W_V, W_O, G, U):
    out = torch.empty(L, H)
    for l in range(L):
        for h in range(H):
            ov = torch.diagonal(W_V[l, h // (H // KV)] @ W_O[l, h])  # forms the OV matrix
            out[l, h] = (torch.nn.functional.silu(G @ ov) * (U @ ov)).mean()
    return out


def composition_naive(W_V, W_O, M):
    out = torch.empty(M.shape[0], L, H)
    for l in range(L):
        for h in range(H):
            ov = W_V[l, h // (H // KV)] @ W_O[l, h]
            out[:, l, h] = (M @ ov.T).norm(dim=1) / (M.norm(dim=1) * ov.norm())
    return out


@pytest.mark.benchmark(group="channel scores, paper: 576 heads x 200 neurons (3B shape, fp32)", min_rounds=5)
def test_paper_low_rank(benchmark, weights):
    W_V, W_O, G, U = weights
    out = benchmark(paper_scores, W_V, W_O, G, U)
    assert out.shape == (L, H) and torch.isfinite(out).all()


@pytest.mark.benchmark(group="channel scores, paper: 576 heads x 200 neurons (3B shape, fp32)")
def test_paper_naive(benchmark, weights):
    W_V, W_O, G, U = weights
    out = benchmark.pedantic(paper_naive, args=weights, rounds=1, iterations=1)
    torch.testing.assert_close(out, paper_scores(*weights), rtol=1e-3, atol=1e-6)


@pytest.mark.benchmark(group="composition matrix: 200 neurons x 576 heads (3B shape, fp32)", min_rounds=3)
def test_composition_low_rank(benchmark, weights):
    W_V, W_O, _, U = weights
    out = benchmark(composition_scores, W_V, W_O, U)
    assert out.shape == (N, L, H) and torch.isfinite(out).all()


@pytest.mark.benchmark(group="composition matrix: 200 neurons x 576 heads (3B shape, fp32)")
def test_composition_naive(benchmark, weights):
    W_V, W_O, _, U = weights
    out = benchmark.pedantic(composition_naive, args=(W_V, W_O, U), rounds=1, iterations=1)
    torch.testing.assert_close(out, composition_scores(W_V, W_O, U), rtol=1e-3, atol=1e-6)
