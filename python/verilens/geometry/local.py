"""Local geometry: nearest neighbours, LLE weights, intrinsic dimension.

- `knn(E, k)`: each token's k nearest other tokens (cosine or Euclidean), blocked so
  that memory stays at one [block, V] slab; distances of the chosen neighbours are
  recomputed exactly in float64.
- `knn_overlap(E_a, E_b, k)`: per token, Jaccard |N_a ∩ N_b| / |N_a ∪ N_b| of its k
  nearest neighbours in the two models (rows aligned by token).
- `lle_weights(E, k)`: Locally Linear Embedding reconstruction weights (Roweis & Saul
  2000): w = argmin ||x - sum_j w_j x_nj||^2 subject to sum_j w_j = 1, with the local
  Gram matrix regularised by reg * trace (the scikit-learn convention).
- `lle_agreement(E_a, E_b, k)`: neighbours are taken in model A; the weights of that
  same neighbourhood are fitted in both models and compared (cosine between the weight
  vectors), and A's weights are used to reconstruct B's token (relative residual).
- `intrinsic_dimension(E, k)`: per-token Levina-Bickel maximum-likelihood estimate
  (Levina & Bickel, NIPS 2004) from the distances T_1 <= ... <= T_k to the k nearest
  neighbours:  m(x) = [ 1/(k-1) * sum_{j<k} log(T_k / T_j) ]^(-1).
  We chose it over TwoNN because it is a per-point estimator by construction (TwoNN
  only uses two neighbours per point and is meant to be pooled); the global value
  follows MacKay & Ghahramani's correction: the inverse of the mean of the per-token
  inverse estimates. Under the cosine metric the distance used is the chord length
  ||x/|x| - y/|y||| = sqrt(2 * cosine distance) (a true metric on the sphere). Tokens
  with a zero distance among their neighbours (duplicate rows) get NaN and are counted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import VerilensError
from ._inputs import as_matrix, check_finite, check_pair, row_norms64

LOCAL_METRICS = ("cosine", "euclidean")  # neighbourhoods: the metrics the kNN and LLE code computes


def _check_k(k: int, V: int):
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise VerilensError(f"k must be a positive integer, not {k!r}")
    if k >= V:
        raise VerilensError(f"k={k} needs more than k tokens; there are only {V} (pick k <= {V - 1})")


def _prep(E, name, metric):
    if metric not in LOCAL_METRICS:
        raise VerilensError(f"unknown metric {metric!r}; neighbourhoods use one of {LOCAL_METRICS}")
    X = as_matrix(E, name)
    check_finite(X, name)
    if metric == "cosine":
        n = row_norms64(X)
        zero = torch.nonzero(n == 0).flatten().tolist()
        if zero:
            raise VerilensError(
                f"{name} has {len(zero)} zero-norm rows ({zero[:10]}): cosine neighbours are undefined; "
                f"drop them or use metric='euclidean'")
        X = (X.double() / n[:, None]).to(X.dtype)
    return X


def knn(E, k: int = 10, metric: str = "cosine", block: int | None = None):
    """(indices [V, k] int64, distances [V, k] float64) of each row's k nearest other
    rows, nearest first. Under the cosine metric distances are 1 - cos."""
    X = _prep(E, "E", metric)
    return _knn_prepped(X, k, metric, block)


def _knn_prepped(X: torch.Tensor, k: int, metric: str, block: int | None):
    V = X.shape[0]
    _check_k(k, V)
    block = block or max(1, min(1024, (1 << 24) // max(V, 1)))
    sq = None if metric == "cosine" else (X.double() ** 2).sum(1).to(X.dtype)
    idx = torch.empty(V, k, dtype=torch.int64)
    for s in range(0, V, block):
        e = min(V, s + block)
        G = X[s:e] @ X.T
        if metric == "cosine":
            D = -G  # order by 1 - cos
        else:
            D = sq[s:e, None] + sq[None, :] - 2 * G
        D[torch.arange(e - s), torch.arange(s, e)] = float("inf")
        idx[s:e] = torch.topk(D, k, dim=1, largest=False, sorted=True).indices.cpu()
    # exact float64 distances of the chosen neighbours (and re-sort by them)
    dist = _exact_dist(X, idx, metric)
    order = torch.argsort(dist, dim=1, stable=True)
    return torch.gather(idx, 1, order).numpy(), torch.gather(dist, 1, order).numpy()


def _exact_dist(X, idx, metric, block: int = 4096):
    V, k = idx.shape
    out = torch.empty(V, k, dtype=torch.float64)
    for s in range(0, V, block):
        e = min(V, s + block)
        xi = X[s:e].double()[:, None, :]
        xn = X[idx[s:e]].double()
        if metric == "cosine":
            out[s:e] = 1.0 - (xi * xn).sum(-1)
        else:
            out[s:e] = torch.linalg.vector_norm(xn - xi, dim=-1)
    return out


def knn_overlap(E_a, E_b, k: int = 10, metric: str = "cosine") -> np.ndarray:
    """Per-token Jaccard@k between the two models' k-nearest-neighbour sets, in [0, 1]."""
    A, B = _prep(E_a, "E_a", metric), _prep(E_b, "E_b", metric)
    check_pair(A, B, min_rows=2)
    ia, _ = _knn_prepped(A, k, metric, None)
    ib, _ = _knn_prepped(B, k, metric, None)
    return jaccard_rows(ia, ib)


def jaccard_rows(ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    ia, ib = torch.as_tensor(ia), torch.as_tensor(ib)
    inter = torch.zeros(ia.shape[0], dtype=torch.int64)
    for s in range(0, ia.shape[0], 8192):
        a, b = ia[s:s + 8192], ib[s:s + 8192]
        inter[s:s + 8192] = (a[:, :, None] == b[:, None, :]).any(-1).sum(1)
    k = ia.shape[1]
    return (inter.double() / (2 * k - inter).double()).numpy()


def _lle_solve(X64: torch.Tensor, rows: torch.Tensor, nbrs: torch.Tensor, reg: float) -> torch.Tensor:
    """LLE weights for tokens `rows` with neighbour ids `nbrs` [m, k] in float64 rows X64."""
    Z = X64[nbrs] - X64[rows][:, None, :]          # [m, k, d]
    C = Z @ Z.transpose(1, 2)                       # local Gram [m, k, k]
    k = C.shape[-1]
    tr = torch.diagonal(C, dim1=1, dim2=2).sum(-1)
    r = torch.where(tr > 0, reg * tr, torch.full_like(tr, reg))
    C = C + r[:, None, None] * torch.eye(k, dtype=C.dtype)
    w = torch.linalg.solve(C, torch.ones(C.shape[0], k, 1, dtype=C.dtype)).squeeze(-1)
    return w / w.sum(1, keepdim=True)


def lle_weights(E, k: int = 10, reg: float = 1e-3, metric: str = "euclidean", neighbors=None):
    """(weights [V, k] float64, neighbour ids [V, k]) of Locally Linear Embedding.

    Neighbours by `metric` unless `neighbors` [V, k] is given; each row of weights sums
    to 1. The weights reconstruct the raw rows (LLE's own convention is Euclidean)."""
    X = as_matrix(E, "E")
    check_finite(X, "E")
    if reg <= 0:
        raise VerilensError("reg must be positive (LLE's local Gram is singular when k > dim)")
    if neighbors is None:
        nbrs, _ = knn(X, k, metric)
    else:
        nbrs = np.asarray(neighbors, dtype=np.int64)
        if nbrs.ndim != 2 or nbrs.shape[0] != X.shape[0]:
            raise VerilensError(f"neighbors must be [V, k] with V={X.shape[0]}; got {nbrs.shape}")
        if nbrs.min() < 0 or nbrs.max() >= X.shape[0]:
            raise VerilensError("neighbors holds ids outside [0, V)")
    return _lle_all(X, torch.as_tensor(nbrs), reg), nbrs


def _lle_all(X, nbrs: torch.Tensor, reg: float, block: int = 4096) -> np.ndarray:
    V = X.shape[0]
    W = torch.empty(nbrs.shape, dtype=torch.float64)
    for s in range(0, V, block):
        e = min(V, s + block)
        rows = torch.arange(s, e)
        nb = nbrs[s:e]
        uniq, inv = torch.unique(torch.cat([rows, nb.flatten()]), return_inverse=True)
        X64 = X[uniq].double()
        W[s:e] = _lle_solve(X64, inv[: e - s], inv[e - s:].view(e - s, -1), reg)
    return W.numpy()


@dataclass
class LLEAgreement:
    weight_cosine: np.ndarray    # [V] cosine between A's and B's weights on A's neighbourhood
    cross_residual: np.ndarray   # [V] ||x_b - sum w_a x_b,n|| / ||x_b - mean_b||  (A's weights in B)
    self_residual: np.ndarray    # [V] same with B's own weights (the floor for cross_residual)
    neighbors: np.ndarray        # [V, k] neighbour ids (taken in model A)

    def summary(self) -> dict:
        return {"weight_cosine_mean": float(np.nanmean(self.weight_cosine)),
                "cross_residual_median": float(np.nanmedian(self.cross_residual)),
                "self_residual_median": float(np.nanmedian(self.self_residual))}


def lle_agreement(E_a, E_b, k: int = 10, reg: float = 1e-3, metric: str = "cosine") -> LLEAgreement:
    """Compare LLE weights across models on the same neighbourhoods (taken in A)."""
    A, B = as_matrix(E_a, "E_a"), as_matrix(E_b, "E_b")
    check_pair(A, B, min_rows=2)
    check_finite(A, "E_a")
    check_finite(B, "E_b")
    nbrs, _ = knn(A, k, metric)
    nb = torch.as_tensor(nbrs)
    Wa = torch.as_tensor(_lle_all(A, nb, reg))
    Wb = torch.as_tensor(_lle_all(B, nb, reg))
    cos = (Wa * Wb).sum(1) / (torch.linalg.vector_norm(Wa, dim=1) * torch.linalg.vector_norm(Wb, dim=1))
    V = A.shape[0]
    cross = torch.empty(V, dtype=torch.float64)
    own = torch.empty(V, dtype=torch.float64)
    mu = B.double().mean(0)
    for s in range(0, V, 4096):
        e = min(V, s + 4096)
        xb = B[s:e].double()
        xn = B[nb[s:e]].double()
        scale = torch.linalg.vector_norm(xb - mu, dim=1).clamp_min(1e-300)
        cross[s:e] = torch.linalg.vector_norm(xb - (Wa[s:e, :, None] * xn).sum(1), dim=1) / scale
        own[s:e] = torch.linalg.vector_norm(xb - (Wb[s:e, :, None] * xn).sum(1), dim=1) / scale
    return LLEAgreement(cos.numpy(), cross.numpy(), own.numpy(), nbrs)


@dataclass
class IntrinsicDimension:
    per_token: np.ndarray   # [V] Levina-Bickel MLE (NaN where undefined)
    global_mle: float       # MacKay-Ghahramani pooled estimate
    k: int
    metric: str
    undefined: int          # tokens with a zero neighbour distance (duplicates)


def intrinsic_dimension(E, k: int = 20, metric: str = "cosine") -> IntrinsicDimension:
    """Per-token Levina-Bickel MLE of the intrinsic dimension from k neighbours (k >= 3)."""
    if k < 3:
        raise VerilensError("intrinsic_dimension needs k >= 3 neighbours")
    X = _prep(E, "E", metric)
    _, dist = _knn_prepped(X, k, metric, None)
    T = np.sqrt(np.maximum(2.0 * dist, 0.0)) if metric == "cosine" else dist
    return _levina_bickel(T, k, metric)


def _levina_bickel(T: np.ndarray, k: int, metric: str) -> IntrinsicDimension:
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(T[:, k - 1:k] / T[:, : k - 1])       # log(T_k / T_j), j < k
        inv = logs.sum(1) / (k - 1)                          # 1 / m(x)
        bad = ~np.isfinite(inv) | (inv <= 0)
        m = np.where(bad, np.nan, 1.0 / inv)
    good = inv[~bad]
    glob = float(1.0 / good.mean()) if good.size else float("nan")
    return IntrinsicDimension(m, glob, k, metric, int(bad.sum()))


def intrinsic_dimension_ref(E, k: int = 20) -> np.ndarray:
    """Reference (Euclidean, dense O(V^2) with scipy): per-token Levina-Bickel MLE."""
    from scipy.spatial.distance import cdist

    X = np.asarray(E, dtype=np.float64)
    D = cdist(X, X)
    np.fill_diagonal(D, np.inf)
    T = np.sort(D, axis=1)[:, :k]
    return _levina_bickel(T, k, "euclidean").per_token
