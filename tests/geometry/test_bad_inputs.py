"""Every bad input gets a clear VerilensError (or a reported, counted skip)."""
import warnings

import numpy as np
import pytest
import torch

from verilens import geometry as G
from verilens.errors import VerilensError
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr


def test_too_few_tokens(rng):
    with pytest.raises(VerilensError, match="at least 3"):
        G.distance_correlation(rng.standard_normal((2, 4)), rng.standard_normal((2, 5)))
    with pytest.raises(VerilensError, match="at least 3"):
        G.distance_correlation(rng.standard_normal((1, 4)), rng.standard_normal((1, 5)))


def test_mismatched_rows(rng):
    with pytest.raises(VerilensError, match="rows must be aligned"):
        G.distance_correlation(rng.standard_normal((10, 4)), rng.standard_normal((11, 4)))


def test_dtype_mix(rng):
    A = rng.standard_normal((10, 4))
    with pytest.raises(VerilensError, match="dtype mix"):
        G.distance_correlation(A, A.astype(np.float32))
    with pytest.raises(VerilensError, match="floating point"):
        G.distance_correlation(A, (A * 10).astype(np.int64))


def test_shapes(rng):
    with pytest.raises(VerilensError, match="2-D"):
        G.distance_correlation(rng.standard_normal(10), rng.standard_normal(10))
    with pytest.raises(VerilensError, match="zero columns"):
        G.distance_correlation(np.zeros((5, 0)), np.zeros((5, 0)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_rows_named(rng, bad):
    A, B = rng.standard_normal((50, 4)), rng.standard_normal((50, 6))
    B[7, 2] = bad
    B[31, 0] = bad
    with pytest.raises(VerilensError, match=r"E_b has NaN or inf in rows 7, 31"):
        G.distance_correlation(A, B)
    with pytest.raises(VerilensError, match=r"rows 7, 31"):
        G.mantel(B, A, permutations=3)


def test_zero_rows_cosine_raise_and_skip(rng):
    A, B = rng.standard_normal((40, 4)), rng.standard_normal((40, 6))
    A[3] = 0
    B[17] = 0
    with pytest.raises(VerilensError, match=r"2 zero-norm rows in E_a and E_b \(rows 3, 17\).*zero_rows='skip'"):
        G.distance_correlation(A, B)
    with pytest.warns(G.GeometryWarning, match="skipped 2 zero-norm rows"):
        info = G.distance_correlation(A, B, zero_rows="skip", return_info=True)
    assert info.skipped_rows == [3, 17] and info.n_tokens == 38
    keep = np.setdiff1d(np.arange(40), [3, 17])
    ref = pearsonr(pdist(A[keep], "cosine"), pdist(B[keep], "cosine")).statistic
    assert abs(info.r - ref) < 1e-9
    # euclidean has no trouble with zero rows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        G.distance_correlation(A, B, "euclidean")


def test_skip_leaving_too_few(rng):
    A, B = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    A[:2] = 0
    with pytest.warns(G.GeometryWarning), pytest.raises(VerilensError, match="only 2 usable"):
        G.distance_correlation(A, B, zero_rows="skip")


def test_constant_distances(rng):
    A = np.eye(5)  # all pairwise distances equal
    with pytest.raises(VerilensError, match="zero variance"):
        G.distance_correlation(A, rng.standard_normal((5, 3)))


def test_bad_options(rng):
    A, B = rng.standard_normal((10, 4)), rng.standard_normal((10, 4))
    with pytest.raises(VerilensError, match="unknown metric"):
        G.distance_correlation(A, B, "manhattan")
    with pytest.raises(VerilensError, match="zero_rows"):
        G.distance_correlation(A, B, zero_rows="ignore")
    with pytest.raises(VerilensError, match="unknown backend"):
        G.distance_correlation(A, B, backend="gpu")
    with pytest.raises(VerilensError, match="CUDA"):
        import os
        if os.environ.get("TRITON_INTERPRET", "0") not in ("0", ""):
            pytest.skip("interpreter enabled")
        G.distance_correlation(A, B, method="stream", backend="triton")
    with pytest.raises(VerilensError, match="permutations"):
        G.mantel(A, B, permutations=0)
    with pytest.raises(VerilensError, match="not a tokenizer"):
        G.shared_vocab(object(), object())


def test_half_precision_is_widened_exactly(rng):
    A = torch.randn(30, 8, dtype=torch.bfloat16)
    B = torch.randn(30, 5, dtype=torch.bfloat16)
    r = G.distance_correlation(A, B)
    ref = pearsonr(pdist(A.double().numpy(), "cosine"), pdist(B.double().numpy(), "cosine")).statistic
    assert abs(r - ref) < 1e-5


def test_local_and_map_errors(rng):
    A, B = rng.standard_normal((10, 4)), rng.standard_normal((10, 3))
    with pytest.raises(VerilensError, match="k=10 needs more than k tokens"):
        G.knn_overlap(A, B, k=10)
    with pytest.raises(VerilensError, match="rows must be aligned"):
        G.knn_overlap(A, B[:9], k=3)
    A0 = A.copy()
    A0[2] = 0
    with pytest.raises(VerilensError, match="zero-norm rows"):
        G.knn(A0, 3)
    with pytest.raises(VerilensError, match="k >= 3"):
        G.intrinsic_dimension(A, k=2)
    m = G.fit_map(A, B, alpha=1.0)
    with pytest.raises(VerilensError, match=r"shape \[4\] or \[n, 4\]"):
        G.transfer(np.ones(3), m)
    with pytest.raises(VerilensError, match="alpha"):
        G.fit_map(A, B, alpha=-1)
    with pytest.raises(VerilensError, match="fit_map"):
        G.transfer(np.ones(4), "not a map")
