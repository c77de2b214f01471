"""The closed-form distance correlation (cosine, dot, sqeuclidean) against scipy's
pdist + pearsonr, against the streamed pair loop, and the Mantel test against explicit
permutations; blocks of rows at every boundary."""
import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr

from verilens import geometry as G
from verilens.errors import VerilensError
from verilens.geometry import closed_form


def pair_values(X, metric):
    X = X.astype(np.float64)
    if metric == "dot":
        return (X @ X.T)[np.triu_indices(len(X), 1)]
    return pdist(X, metric)


def scipy_r(A, B, metric):
    return pearsonr(pair_values(A, metric), pair_values(B, metric)).statistic


@pytest.fixture(params=[7, 64, 2048], ids=lambda b: f"block{b}")
def block(request, monkeypatch):
    """Row blocks smaller than V, dividing it or not, and one block for everything."""
    monkeypatch.setattr(closed_form, "_BLOCK", request.param)
    return request.param


@pytest.mark.parametrize("metric", ["cosine", "dot", "sqeuclidean"])
@pytest.mark.parametrize("V,da,db", [(3, 5, 4), (131, 7, 19), (600, 40, 24)])
def test_matches_scipy_float64(rng, make_pair, block, metric, V, da, db):
    A, B = make_pair(V, da, db, np.float64, offset=1.5)
    info = G.distance_correlation(A, B, metric, return_info=True)
    assert info.method == "closed" and info.statistic == "pearson" and info.n_pairs == V * (V - 1) // 2
    assert abs(info.r - scipy_r(A, B, metric)) < 1e-12


@pytest.mark.parametrize("metric", ["cosine", "dot", "sqeuclidean"])
def test_float32_inputs_within_1e6_of_their_float64_value(rng, make_pair, metric):
    A, B = make_pair(3000, 48, 80, np.float32, offset=0.5)
    r32 = G.distance_correlation(A, B, metric)
    assert abs(r32 - scipy_r(A, B, metric)) < 1e-6


def test_equals_the_stream(rng, make_pair):
    A, B = make_pair(900, 33, 17, np.float64, offset=0.7)
    closed = G.distance_correlation(A, B, "cosine")
    stream = G.distance_correlation(A, B, "cosine", method="stream", backend="torch")
    assert abs(closed - stream) < 1e-12


def test_anisotropic_rows_keep_their_digits(rng):
    """Every row near one common direction (real embeddings are anisotropic): the mean
    similarity is near 1 and the spread tiny, which is where a raw-moment formula loses
    digits; the float64 combination keeps r to 1e-9."""
    V, d = 800, 16
    common = rng.standard_normal(d) * 20
    A = common + rng.standard_normal((V, d))
    B = np.hstack([A[:, :8], rng.standard_normal((V, 8))]) + common
    for metric in ("cosine", "sqeuclidean", "dot"):
        assert abs(G.distance_correlation(A, B, metric) - scipy_r(A, B, metric)) < 1e-12, metric


@pytest.mark.parametrize("metric", ["cosine", "dot", "sqeuclidean"])
def test_mantel_matches_explicit_permutations(rng, make_pair, block, metric):
    """The same permutations as ever (default_rng(seed).permutation(V), in order), batched
    into one GEMM per block or one at a time: the same null distribution."""
    V = 150
    A, B = make_pair(V, 6, 9, strength=0.8)
    g = np.random.default_rng(3)
    perms = [g.permutation(V) for _ in range(11)]
    expect = [scipy_r(A, B[p], metric) for p in perms]
    for batch in (1, 4):
        res = G.mantel(A, B, metric, permutations=11, seed=3, batch=batch)
        assert res.method == "closed"
        np.testing.assert_allclose(res.null, expect, atol=1e-12)
        assert abs(res.r - scipy_r(A, B, metric)) < 1e-12
        assert res.p_value == pytest.approx((1 + sum(e >= res.r for e in expect)) / 12)


def test_mantel_closed_equals_stream(rng, make_pair):
    A, B = make_pair(120, 5, 7, strength=0.5)
    closed = G.mantel(A, B, permutations=9, seed=1)
    stream = G.mantel(A, B, permutations=9, seed=1, method="stream", backend="blas")
    np.testing.assert_allclose(closed.null, stream.null, atol=1e-12)
    assert closed.p_value == stream.p_value and stream.method == "stream"


def test_zero_rows_and_torch_inputs(rng):
    A = torch.from_numpy(rng.standard_normal((50, 6)))
    B = torch.from_numpy(rng.standard_normal((50, 4)))
    A[7] = 0
    with pytest.raises(VerilensError, match="zero-norm"):
        G.distance_correlation(A, B)
    with pytest.warns(G.GeometryWarning):
        info = G.distance_correlation(A, B, zero_rows="skip", return_info=True)
    keep = np.r_[0:7, 8:50]
    assert info.skipped_rows == [7] and abs(info.r - scipy_r(A.numpy()[keep], B.numpy()[keep], "cosine")) < 1e-12
    # a zero row is a point like any other for dot and sqeuclidean
    assert abs(G.distance_correlation(A, B, "dot") - scipy_r(A.numpy(), B.numpy(), "dot")) < 1e-12


def test_bad_method_choices(rng):
    A, B = rng.standard_normal((20, 4)), rng.standard_normal((20, 3))
    with pytest.raises(VerilensError, match="unknown method"):
        G.distance_correlation(A, B, method="fast")
    with pytest.raises(VerilensError, match="no closed form"):
        G.distance_correlation(A, B, rank=True, method="closed")
    with pytest.raises(VerilensError, match="stream"):
        G.distance_correlation(A, B, "dot", method="stream")
    with pytest.raises(VerilensError, match="closed form covers"):
        G.distance_correlation(A, B, "euclidean", method="closed")
    with pytest.raises(VerilensError, match="method='stream'"):
        G.distance_correlation(A, B, backend="core")
    with pytest.raises(VerilensError, match="unknown backend"):
        G.distance_correlation(A, B, backend="gpu")
    # Spearman on the sampled path works for every metric
    for metric in ("dot", "sqeuclidean"):
        rho = G.distance_correlation(A, B, metric, rank=True)
        assert -1 <= rho <= 1
