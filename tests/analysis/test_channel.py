"""Channel scores and composition scores against the naive OV-matrix references."""
import pytest
import torch

from verilens.analysis import channel_scores, composition_matrix, ov_diagonals
from channel_reference import channel_scores_naive, composition_matrix_naive
from verilens.errors import VerilensError


@pytest.fixture
def neurons():
    g = torch.Generator().manual_seed(0)
    return [(int(l), int(i)) for l, i in zip(torch.randint(0, 3, (25,), generator=g), torch.randint(0, 96, (25,), generator=g))]


def test_ov_diagonal(model):
    ov = ov_diagonals(model)
    l, h = 1, 3
    torch.testing.assert_close(ov[l, h], torch.diagonal(model.W_V[l, h] @ model.W_O[l, h]))


def test_paper_scores_equal_naive(model, neurons):
    torch.testing.assert_close(channel_scores(model, neurons, "paper"), channel_scores_naive(model, neurons),
                               rtol=1e-4, atol=1e-6)


def test_composition_equals_naive(model, neurons):
    fast = composition_matrix(model, neurons, chunk_heads=5)
    torch.testing.assert_close(fast, composition_matrix_naive(model, neurons), rtol=1e-4, atol=1e-6)
    assert ((fast >= 0) & (fast <= 1 + 1e-5)).all()
    # head-level score: ||M (AB)^T||_F / (||M||_F ||AB||_F), from the matrices directly
    M = torch.stack([model.blocks[l].mlp.up_proj.weight[i] for l, i in neurons])
    ov = model.W_V[2, 1] @ model.W_O[2, 1]
    want = (M @ ov.T).norm() / (M.norm() * ov.norm())
    torch.testing.assert_close(channel_scores(model, neurons, "composition")[2, 1], want, rtol=1e-4, atol=1e-6)


def test_bad_neurons(model):
    with pytest.raises(VerilensError, match="out of range"):
        channel_scores(model, [(0, 96)])
    with pytest.raises(VerilensError, match="at least one"):
        channel_scores(model, [])
    with pytest.raises(VerilensError, match="method"):
        channel_scores(model, [(0, 1)], method="magic")
