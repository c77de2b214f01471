"""distance_correlation and mantel against scipy (pdist + pearsonr / spearmanr)."""
import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr, spearmanr

from verilens import geometry as G
from verilens.kernels.distance_correlation import distance_correlation_ref, pearson_sums_ref

TOL = {np.float64: 1e-9, np.float32: 1e-5}
CPU_BACKENDS = ["blas", "core", "torch"]


def scipy_r(A, B, metric):
    return pearsonr(pdist(A.astype(np.float64), metric), pdist(B.astype(np.float64), metric)).statistic


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("V,da,db", [(3, 5, 4), (59, 7, 13), (1025, 33, 65)])
def test_matches_scipy(rng, make_pair, dtype, metric, backend, V, da, db):
    A, B = make_pair(V, da, db, dtype, offset=1.5)
    r = G.distance_correlation(A, B, metric, method="stream", backend=backend, tile=256)
    assert abs(r - scipy_r(A, B, metric)) < TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_matches_scipy_3000_tokens(rng, make_pair, dtype, metric):
    A, B = make_pair(3000, 48, 80, dtype, offset=0.5)
    ref = scipy_r(A, B, metric)
    info = G.distance_correlation(torch.from_numpy(A), torch.from_numpy(B), metric, return_info=True)
    assert info.n_pairs == 3000 * 2999 // 2 and info.n_tokens == 3000
    assert abs(info.r - ref) < TOL[dtype]
    # the fused compiled kernel agrees too (default tile sizes, odd last tile)
    assert abs(G.distance_correlation(A, B, metric, method="stream", backend="core") - ref) < TOL[dtype]


def test_tiles_cover_each_pair_once(rng, make_pair):
    """Tile edges at every position: the count is V(V-1)/2 and sums match the reference."""
    A, B = make_pair(101, 9, 6)
    ref = pearson_sums_ref(A, B, "euclidean", cx=1.0, cy=2.0)
    from verilens.geometry import correlation as C
    from verilens.geometry._inputs import prepare_pair

    prep = prepare_pair(A, B, "euclidean")
    wa, wb, mu_a, mu_b = C._weights(prep, "euclidean")
    for tile in (3, 7, 50, 101, 500):
        for be in ("blas", "torch"):
            (six,) = C._tile_sums_multi(prep, "euclidean", wa, wb, mu_a, mu_b, 1.0, 2.0, [None], be, tile)
            np.testing.assert_allclose(six, ref, rtol=1e-10, atol=1e-8)


def test_precision_large_offset(rng, make_pair):
    """Distances with a large common part and a tiny spread: the shifted sums keep the
    correlation (a naive raw-moment float64 sum would lose most digits)."""
    A, B = make_pair(400, 6, 6)
    A = A * 1e-4
    A[:, 0] += 1e3  # every pair's euclidean distance is dominated by nothing; cosine ~ 0
    ref = scipy_r(A, B, "euclidean")
    assert abs(G.distance_correlation(A, B, "euclidean") - ref) < 1e-9


def test_torch_ref_matches_scipy(rng, make_pair):
    A, B = make_pair(80, 5, 7)
    for metric in ("cosine", "euclidean"):
        assert abs(distance_correlation_ref(A, B, metric) - scipy_r(A, B, metric)) < 1e-12


def test_spearman_exact_when_few_pairs(rng, make_pair):
    A, B = make_pair(60, 5, 8)
    ref = spearmanr(pdist(A, "cosine"), pdist(B, "cosine")).statistic
    info = G.distance_correlation(A, B, "cosine", rank=True, return_info=True)
    assert info.statistic == "spearman" and info.method == "sample" and info.sampled_pairs == 60 * 59 // 2
    assert abs(info.r - ref) < 1e-12


def test_spearman_sampled_close_to_exact(rng, make_pair):
    A, B = make_pair(800, 8, 8, strength=1.0)
    exact = spearmanr(pdist(A, "euclidean"), pdist(B, "euclidean")).statistic
    r = G.distance_correlation(A, B, "euclidean", rank=True, sample_pairs=100_000, seed=1)
    assert abs(r - exact) < 0.01


@pytest.mark.parametrize("backend", ["blas", "core", "torch"])
def test_mantel_matches_explicit_permutations(rng, make_pair, backend):
    A, B = make_pair(70, 6, 9, strength=0.8)
    res = G.mantel(A, B, "euclidean", permutations=9, seed=3, backend=backend, tile=32, batch=4)
    g = np.random.default_rng(3)
    perms = [g.permutation(70) for _ in range(9)]
    expect = [scipy_r(A, B[p], "euclidean") for p in perms]
    np.testing.assert_allclose(res.null, expect, atol=1e-9)
    assert abs(res.r - scipy_r(A, B, "euclidean")) < 1e-9
    k = sum(e >= res.r for e in expect)
    assert res.p_value == pytest.approx((1 + k) / 10)


def test_mantel_detects_shared_geometry(rng, make_pair):
    A, B = make_pair(200, 8, 8, strength=2.0)
    res = G.mantel(A, B, permutations=19, seed=0)
    assert res.r > 0.3 and res.p_value == pytest.approx(1 / 20)
    # independent embeddings: r near 0, p not small
    C = rng.standard_normal((200, 8))
    null = G.mantel(A, C, permutations=19, seed=0)
    assert abs(null.r) < 0.1
