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
