import numpy as np
import torch

from verilens import geometry as G


def test_fit_map_recovers_linear_map(rng):
    A = rng.standard_normal((500, 16))
    M = rng.standard_normal((16, 24))
    B = A @ M + 3.0
    m = G.fit_map(A, B, alpha=1e-8)
    np.testing.assert_allclose(m.W.numpy(), M, atol=1e-6)
    assert m.r2 > 0.999999 and (m.d_in, m.d_out) == (16, 24)
    v = rng.standard_normal(16)
    np.testing.assert_allclose(G.transfer(v, m), v @ M, atol=1e-6)
    np.testing.assert_allclose(G.transfer(A[:3], m, kind="point"), B[:3], atol=1e-6)
    t = G.transfer(torch.from_numpy(v).float(), m)
    assert t.dtype == torch.float32 and t.shape == (24,)


def test_ridge_closed_form(rng):
    A, B = rng.standard_normal((60, 10)), rng.standard_normal((60, 7))
    m = G.fit_map(A, B, alpha=5.0)
    X, Y = A - A.mean(0), B - B.mean(0)
    W = np.linalg.solve(X.T @ X + 5.0 * np.eye(10), X.T @ Y)
    np.testing.assert_allclose(m.W.numpy(), W, atol=1e-10)


def test_heldout_r2_separates_a_real_map_from_overfitting(rng):
    # unrelated matrices with fewer rows than dimensions: the fit rows look explained,
    # held-out rows are not
    A, B = rng.standard_normal((120, 200)), rng.standard_normal((120, 50))
    assert G.fit_map(A, B, alpha=1.0).r2 > 0.9
    assert G.heldout_r2(A, B, alpha=1.0) < 0.05
    # a real linear relation with 10 % noise variance: held-out R² near 1 / 1.1
    A = rng.standard_normal((2000, 20))
    M = rng.standard_normal((20, 8)) / np.sqrt(20)
    B = A @ M + np.sqrt(0.1) * rng.standard_normal((2000, 8))
    assert abs(G.heldout_r2(A, B, alpha=1e-3, seed=3) - 1 / 1.1) < 0.03
