"""kNN overlap, LLE weights and intrinsic dimension against dense references."""
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from verilens import geometry as G
from verilens.geometry.local import intrinsic_dimension_ref


def dense_knn(X, k, metric):
    D = cdist(X, X, metric)
    np.fill_diagonal(D, np.inf)
    idx = np.argsort(D, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(D, idx, 1)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_matches_dense(rng, metric):
    X = rng.standard_normal((301, 9))
    idx, dist = G.knn(X, 7, metric)
    ridx, rdist = dense_knn(X, 7, metric)
    np.testing.assert_allclose(dist, rdist, rtol=1e-9, atol=1e-12)
    assert (idx == ridx).mean() > 0.999  # ties aside


def test_knn_overlap(rng):
    X = rng.standard_normal((200, 6))
    # a rotation (plus scale) keeps every neighbourhood: Jaccard 1
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    assert np.allclose(G.knn_overlap(X, 3.0 * X @ Q, k=5), 1.0)
    j = G.knn_overlap(X, rng.standard_normal((200, 6)), k=5)
    assert j.shape == (200,) and 0 <= j.min() and j.mean() < 0.2
    ia, _ = dense_knn(X, 5, "cosine")
    Y = X + 0.3 * rng.standard_normal(X.shape)
    ib, _ = dense_knn(Y, 5, "cosine")
    ref = np.array([len(set(a) & set(b)) / len(set(a) | set(b)) for a, b in zip(ia, ib)])
    np.testing.assert_allclose(G.knn_overlap(X, Y, k=5), ref)


def lle_ref(X, nbrs, reg):
    W = np.zeros(nbrs.shape)
    for i, nb in enumerate(nbrs):
        Z = X[nb] - X[i]
        C = Z @ Z.T
        C += np.eye(len(nb)) * (reg * np.trace(C) if np.trace(C) > 0 else reg)
        w = np.linalg.solve(C, np.ones(len(nb)))
        W[i] = w / w.sum()
    return W


def test_lle_weights_match_reference(rng):
    X = rng.standard_normal((150, 5))
    W, nbrs = G.lle_weights(X, k=8, reg=1e-3)
    np.testing.assert_allclose(W, lle_ref(X, nbrs, 1e-3), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(W.sum(1), 1.0)


def test_lle_agreement(rng):
    X = rng.standard_normal((200, 4))
    A = X @ rng.standard_normal((4, 12))   # a 4-dim manifold seen through two linear maps
    B = X @ rng.standard_normal((4, 20))
    same = G.lle_agreement(A, B, k=6, reg=1e-9)
    assert np.median(same.weight_cosine) > 0.99 and np.median(same.cross_residual) < 1e-3
    other = G.lle_agreement(A, rng.standard_normal((200, 20)), k=6)
    assert np.median(other.weight_cosine) < 0.9
    assert np.median(other.cross_residual) > np.median(other.self_residual)


def test_intrinsic_dimension(rng):
    # a 3-dim linear subspace inside 20 dims: the MLE should say about 3
    Z = rng.standard_normal((2000, 3)) @ rng.standard_normal((3, 20))
    idim = G.intrinsic_dimension(Z, k=20, metric="euclidean")
    assert 2.5 < idim.global_mle < 3.5
    assert idim.per_token.shape == (2000,) and idim.undefined == 0
    np.testing.assert_allclose(idim.per_token[:300], intrinsic_dimension_ref(Z, 20)[:300], rtol=1e-9)
    # duplicates make the estimate undefined for those tokens: counted, NaN
    Zd = np.vstack([Z[:100], Z[:5]])
    dup = G.intrinsic_dimension(Zd, k=5, metric="euclidean")
    assert dup.undefined == 10 and np.isnan(dup.per_token[:5]).all()
