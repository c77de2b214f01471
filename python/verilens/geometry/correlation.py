"""Global geometry: the correlation between two models' pairwise distance matrices,
and the Mantel permutation test.

Two ways to the same r. For cosine, dot and squared Euclidean distances the default is
the exact closed form from d x d products (verilens.geometry.closed_form: O(V d^2), no
pair is ever formed). method="stream", the only way for Euclidean distances and the
cross-check in the tests, visits every pair: for aligned rows E_a[i] <-> E_b[i] (one token each) we want Pearson's r between
d_A(i, j) and d_B(i, j) over all pairs i < j: 10^9-10^10 pairs at vocabulary scale.
Nothing of size V x V is ever stored: each tile of the token x token plane yields six
numbers (pair count and the sums of x, y, x^2, y^2, xy) and the tiles' sums are added
with Neumaier's compensated summation in float64. x = d_A - cx, y = d_B - cy are
shifted by pilot means (from a fixed sample of pairs) so that the raw-moment formula
suffers no cancellation.

Backends (all give the same sums to rounding):
  "blas"   BLAS Gram tiles (torch.mm -> MKL/OpenBLAS) reduced by the compiled core's
           fused, vectorised tile reduction (OpenMP); the CPU default (measured fastest,
           see benchmarks/RESULTS.md)
  "core"   the compiled core's fully fused kernel (its own cache-blocked AVX2 dots; no
           tile is stored)
  "torch"  BLAS tiles reduced with torch ops in float64 (no compiled code needed)
  "triton" the GPU kernel in verilens.kernels.distance_correlation (CUDA tensors)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import dist, ops
from ..errors import VerilensError
from ._inputs import Prepared, prepare_pair
from .closed_form import CLOSED_METRICS, closed_form_r, pearson_from_sums

BACKENDS = ("auto", "blas", "core", "torch", "triton")
METHODS = ("auto", "closed", "stream")
STREAM_METRICS = ("cosine", "euclidean")
_PILOT_PAIRS = 2000  # the shift only needs to be near the mean distance


class _Neumaier:
    __slots__ = ("s", "c")

    def __init__(self):
        self.s = 0.0
        self.c = 0.0

    def add(self, x: float):
        t = self.s + x
        if abs(self.s) >= abs(x):
            self.c += (self.s - t) + x
        else:
            self.c += (x - t) + self.s
        self.s = t

    @property
    def value(self) -> float:
        return self.s + self.c


class _Sums:
    def __init__(self):
        self.acc = [_Neumaier() for _ in range(6)]

    def add(self, six):
        for a, v in zip(self.acc, six):
            a.add(float(v))

    def values(self):
        return [a.value for a in self.acc]


@dataclass
class DistanceCorrelation:
    """Result of distance_correlation(..., return_info=True)."""

    r: float
    metric: str
    n_tokens: int
    n_pairs: int
    statistic: str                  # "pearson" or "spearman"
    method: str                     # "closed" (d x d products), "stream" (tiles) or "sample" (Spearman)
    backend: str                    # the stream's backend; "torch" for the closed form (BLAS / cuBLAS)
    skipped_rows: list = field(default_factory=list)  # zero-norm rows dropped (zero_rows="skip")
    sampled_pairs: int | None = None  # spearman: pairs in the sample

    def __float__(self):
        return float(self.r)


# ----------------------------------------------------------------------------------
# Preparation shared by the backends
def _core():
    try:
        from .. import _core

        if hasattr(_core, "geometry_tile_sums"):
            return _core
    except ImportError:
        pass
    return None


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise VerilensError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    if backend == "auto":
        if device.type == "cuda":
            return "triton"
        return "blas"  # measured fastest on CPU (benchmarks/RESULTS.md); falls back to torch sums
    if backend == "triton" and device.type != "cuda":
        import os

        if os.environ.get("TRITON_INTERPRET", "0") in ("0", ""):
            raise VerilensError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for testing)")
    if backend in ("blas", "core", "torch") and device.type != "cpu":
        raise VerilensError(f"backend={backend!r} runs on CPU tensors; move them with .cpu() or use 'triton'")
    if backend == "core" and _core() is None:
        raise VerilensError("backend='core' needs the compiled core (verilens._core); reinstall verilens")
    return backend


def _weights(prep: Prepared, metric: str):
    """Per-row weights used by the kernels: inverse norms (cosine) or squared norms of
    the mean-centred rows (euclidean)."""
    A, B = prep.A, prep.B
    if metric == "cosine":
        return 1.0 / prep.norms_a, 1.0 / prep.norms_b, None, None
    mu_a = A.double().mean(0) if A.shape[0] * A.shape[1] <= 1 << 24 else _blocked_mean(A)
    mu_b = B.double().mean(0) if B.shape[0] * B.shape[1] <= 1 << 24 else _blocked_mean(B)
    wa = _blocked_sqnorm(A, mu_a)
    wb = _blocked_sqnorm(B, mu_b)
    return wa, wb, mu_a, mu_b


def _blocked_mean(X, block=8192):
    s = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device)
    for i in range(0, X.shape[0], block):
        s += X[i:i + block].double().sum(0)
    return s / X.shape[0]


def _blocked_sqnorm(X, mu, block=8192):
    out = torch.empty(X.shape[0], dtype=torch.float64, device=X.device)
    for i in range(0, X.shape[0], block):
        out[i:i + block] = ((X[i:i + block].double() - mu) ** 2).sum(1)
    return out


def _sample_pairs(V: int, m: int, gen: torch.Generator):
    """m random pairs (i, j), i != j, uniformly over unordered pairs (with replacement)."""
    i = torch.randint(0, V, (m,), generator=gen)
    j = torch.randint(0, V - 1, (m,), generator=gen)
    j = j + (j >= i).long()
    return i, j


def _pair_distances(X, i, j, metric, norms, mu=None, block=65536):
    """Exact float64 distances for the given pairs."""
    out = torch.empty(len(i), dtype=torch.float64)
    for s in range(0, len(i), block):
        ii, jj = i[s:s + block].to(X.device), j[s:s + block].to(X.device)
        xi, xj = X[ii].double(), X[jj].double()
        if metric == "cosine":
            d = 1.0 - (xi * xj).sum(1) / (norms[ii] * norms[jj])
        elif metric == "dot":  # a similarity: its correlations equal those of its negation
            d = (xi * xj).sum(1)
        elif metric == "sqeuclidean":
            d = ((xi - xj) ** 2).sum(1)
        else:
            d = torch.linalg.vector_norm(xi - xj, dim=1)
        out[s:s + block] = d.cpu()
    return out


def _pilot_shift(prep: Prepared, metric: str, seed: int = 0):
    V = prep.A.shape[0]
    gen = torch.Generator().manual_seed(seed + 12345)
    i, j = _sample_pairs(V, min(_PILOT_PAIRS, V * (V - 1) // 2), gen)
    cx = float(_pair_distances(prep.A, i, j, metric, prep.norms_a).mean())
    cy = float(_pair_distances(prep.B, i, j, metric, prep.norms_b).mean())
    return cx, cy


# ----------------------------------------------------------------------------------
# The tile loop (blas / torch backends), with any number of row maps for B (Mantel).
def _default_tile(V: int, dtype: torch.dtype) -> int:
    # two Gram tiles of t x t (plus one per extra permutation) stay far below 256 MB
    return int(min(V, 2048 if dtype == torch.float32 else 1024))


def _tile_sums_multi(prep: Prepared, metric: str, wa, wb, mu_a, mu_b, cx, cy, perms,
                     backend: str, tile: int | None, progress=None):
    """Sums for each B row map in `perms` (None = identity) in one sweep over the tiles:
    A's Gram tile is computed once per tile and shared by all maps."""
    A, B = prep.A, prep.B
    V = A.shape[0]
    t = tile or _default_tile(V, A.dtype)
    tile_backend = "torch" if backend == "torch" else "auto"  # "blas": the compiled core's reduction
    results = [_Sums() for _ in perms]
    perms_t = [None if p is None else torch.as_tensor(p, dtype=torch.int64) for p in perms]

    def rows_a(s, e):
        X = A[s:e]
        return X if mu_a is None else (X.double() - mu_a).to(A.dtype)

    def rows_b(s, e, p):
        X = B[s:e] if p is None else B.index_select(0, p[s:e])
        return X if mu_b is None else (X.double() - mu_b).to(B.dtype)

    ga_buf = torch.empty(t, t, dtype=A.dtype)
    gb_buf = torch.empty(t, t, dtype=A.dtype)
    starts = list(range(0, V, t))
    # the tiles (i0 <= j0), in order; under torchrun (a process group up, verilens.dist) each
    # rank does a contiguous share and every tile's six sums are gathered, so that they are
    # added in the one-process order: the same r to the last bit
    pairs = [(bi, bj) for bi in range(len(starts)) for bj in range(bi, len(starts))]
    tiles: dict[int, list] = {}
    row = None
    for q in dist.split(len(pairs)):
        bi, bj = pairs[q]
        i0, j0 = starts[bi], starts[bj]
        i1, j1 = min(V, i0 + t), min(V, j0 + t)
        if row != bi:
            row, Ai, Bis = bi, rows_a(i0, i1), [rows_b(i0, i1, p) for p in perms_t]
        m, n = i1 - i0, j1 - j0
        ga = torch.mm(Ai, (Ai if j0 == i0 else rows_a(j0, j1)).T, out=ga_buf[:m, :n])
        nar, nac = wa[i0:i1], wa[j0:j1]
        tiles[q] = []
        for k, p in enumerate(perms_t):
            Bj = Bis[k] if j0 == i0 else rows_b(j0, j1, p)
            gb = torch.mm(Bis[k], Bj.T, out=gb_buf[:m, :n])
            if p is None:
                nbr, nbc = wb[i0:i1], wb[j0:j1]
            else:
                nbr, nbc = wb[p[i0:i1]], wb[p[j0:j1]]
            six = ops.dcor_tile_sums(ga, gb, nar, nac, nbr, nbc, i0=i0, j0=j0, upper=j0 == i0, metric=metric,
                                     cx=cx, cy=cy, backend=tile_backend)
            tiles[q].append(six.tolist())
        if progress is not None:
            progress.update(1)
    if dist.active():
        tiles = {q: v for part in dist.gather(tiles) for q, v in part.items()}
    for q in range(len(pairs)):
        for k, six in enumerate(tiles[q]):
            results[k].add(six)
    return [r.values() for r in results]


def _stream_sums_multi(prep, metric, wa, wb, mu_a, mu_b, cx, cy, perms, backend):
    """The fused one-pass sums (verilens.ops.dcor_stream_sums): the compiled core's
    kernel on CPU ("core"), the Triton kernel on CUDA ("triton")."""
    A, B = prep.A, prep.B
    if metric == "euclidean":  # the fused kernels work on raw rows: centre them (one copy each)
        A = (A.double() - mu_a.to(A.device)).to(A.dtype)
        B = (B.double() - mu_b.to(B.device)).to(B.dtype)
    out = []
    for p in perms:
        pt = None if p is None else torch.as_tensor(np.asarray(p), dtype=torch.int64, device=A.device)
        six = ops.dcor_stream_sums(A.contiguous(), B.contiguous(), wa.to(A.device), wb.to(A.device), metric=metric,
                                   cx=cx, cy=cy, perm=pt, backend="triton" if backend == "triton" else "auto")
        out.append(six.tolist())
    return out


def _sums_for(prep, metric, perms, backend, tile=None, seed=0, progress=None):
    wa, wb, mu_a, mu_b = _weights(prep, metric)
    cx, cy = _pilot_shift(prep, metric, seed)
    if backend in ("core", "triton"):
        return _stream_sums_multi(prep, metric, wa, wb, mu_a, mu_b, cx, cy, perms, backend)
    return _tile_sums_multi(prep, metric, wa, wb, mu_a, mu_b, cx, cy, perms, backend, tile, progress)


# ----------------------------------------------------------------------------------
# Public API
def _resolve_method(method: str, metric: str, rank: bool, backend: str) -> str:
    """"closed", "stream" or "sample" (Spearman) for this call, or a VerilensError saying why
    the combination asked for cannot run."""
    if method not in METHODS:
        raise VerilensError(f"unknown method {method!r}; use one of {METHODS}")
    if backend not in BACKENDS:
        raise VerilensError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    if rank:
        if method != "auto":
            raise VerilensError("rank=True (Spearman) ranks the distances of sampled pairs: ranks have no closed "
                                f"form and are not streamed; leave method='auto' (got {method!r})")
        how = "sample"
    elif method == "auto":
        how = "closed" if metric in CLOSED_METRICS else "stream"
    elif method == "stream" and metric not in STREAM_METRICS:
        raise VerilensError(f"method='stream' computes {' and '.join(STREAM_METRICS)} distances; metric {metric!r} "
                            "uses the closed form (method='auto' or 'closed')")
    elif method == "closed" and metric not in CLOSED_METRICS:
        raise VerilensError(f"the closed form covers {', '.join(CLOSED_METRICS)}; metric {metric!r} needs "
                            "method='stream' (or 'auto')")
    else:
        how = method
    if backend != "auto" and how != "stream":
        raise VerilensError(f"backend={backend!r} picks the kernels of the streamed pair loop; this call runs the "
                            f"{'closed form' if how == 'closed' else 'sampled Spearman path'} (metric {metric!r}): "
                            "pass method='stream' to stream every pair")
    return how


def distance_correlation(E_a, E_b, metric: str = "cosine", *, rank: bool = False,
                         zero_rows: str = "raise", sample_pairs: int = 1_000_000, seed: int = 0,
                         method: str = "auto", backend: str = "auto", tile: int | None = None,
                         return_info: bool = False):
    """Pearson correlation between the pairwise distance matrices of two row-aligned
    embedding matrices, over all pairs i < j (no V x V matrix is stored).

    E_a: [V, d_a], E_b: [V, d_b] (torch tensors or numpy arrays, both float32 or both
    float64; widths may differ), row i of each belongs to the same token.
    metric: "cosine" (1 - cos), "dot" (the dot product), "sqeuclidean" or "euclidean".
    method: "auto" (default: "closed" for cosine, dot and sqeuclidean, "stream" for
    euclidean), "closed" (exact from d x d products, O(V d^2); verilens.geometry.closed_form)
    or "stream" (every pair's distance, tile by tile, O(V^2 d); cosine and euclidean).
    rank=True: Spearman's rho on `sample_pairs` uniformly sampled pairs (exact distances
    in float64; all pairs when there are fewer).
    zero_rows (cosine): "raise" (default) names the zero-norm rows; "skip" drops them
    from both sides and warns with the count (also in the info's skipped_rows).
    backend (method="stream"): "auto" | "blas" | "core" | "torch" | "triton" (module doc).
    Returns a float, or a DistanceCorrelation with return_info=True."""
    prep = prepare_pair(E_a, E_b, metric, zero_rows=zero_rows)
    how = _resolve_method(method, metric, rank, backend)
    V = prep.A.shape[0]
    n_all = V * (V - 1) // 2
    if how == "sample":
        r, used = _spearman_sample(prep, metric, sample_pairs, seed)
        info = DistanceCorrelation(r, metric, V, n_all, "spearman", "sample", "torch", list(prep.skipped), used)
    elif how == "closed":
        (r,) = closed_form_r(prep, metric)
        info = DistanceCorrelation(r, metric, V, n_all, "pearson", "closed", "torch", list(prep.skipped))
    else:
        be = _resolve_backend(backend, prep.A.device)
        (six,) = _sums_for(prep, metric, [None], be, tile=tile, seed=seed)
        if int(round(six[0])) != n_all:
            raise RuntimeError(f"internal error: counted {six[0]} pairs, expected {n_all}")
        r = pearson_from_sums(*six)
        info = DistanceCorrelation(r, metric, V, n_all, "pearson", "stream", be, list(prep.skipped))
    return info if return_info else info.r


def _spearman_sample(prep, metric, sample_pairs, seed):
    from scipy.stats import spearmanr

    V = prep.A.shape[0]
    n_all = V * (V - 1) // 2
    if sample_pairs < 3:
        raise VerilensError("sample_pairs must be at least 3")
    if n_all <= sample_pairs:
        iu = torch.triu_indices(V, V, offset=1)
        i, j = iu[0], iu[1]
    else:
        gen = torch.Generator().manual_seed(seed)
        i, j = _sample_pairs(V, sample_pairs, gen)
    x = _pair_distances(prep.A, i, j, metric, prep.norms_a)
    y = _pair_distances(prep.B, i, j, metric, prep.norms_b)
    rho = spearmanr(x.numpy(), y.numpy()).statistic
    if not np.isfinite(rho):
        raise VerilensError("Spearman's rho is undefined: the sampled distances of one model are constant")
    return float(rho), len(i)


@dataclass
class MantelResult:
    r: float                 # observed Pearson r between the distance matrices
    p_value: float           # (1 + #{r_perm >= r}) / (1 + permutations), one-sided
    permutations: int
    null: np.ndarray         # r under each permutation
    metric: str
    n_tokens: int
    skipped_rows: list = field(default_factory=list)
    method: str = "closed"   # "closed" or "stream", as in distance_correlation

    def __float__(self):
        return float(self.r)


def mantel(E_a, E_b, metric: str = "cosine", *, permutations: int = 99, seed: int = 0,
           alternative: str = "greater", zero_rows: str = "raise", method: str = "auto", backend: str = "auto",
           tile: int | None = None, batch: int = 8) -> MantelResult:
    """Mantel permutation test for the correlation of two distance matrices.

    Each permutation p relabels the tokens of E_b: r_p = corr(d_A(i,j), d_B(p(i),p(j))),
    with the permutations numpy.random.default_rng(seed).permutation(V), in order.
    method "closed" (the default for cosine, dot, sqeuclidean): one X^T Y[p] product per
    permutation, `batch` permutations side by side in one GEMM per row block. "stream":
    the tile kernels with the permutation applied to row indices on the fly (no permuted
    copy); on the tile backends up to `batch` permutations share one sweep, so A's Gram
    tiles are computed once per batch.
    p-value: (1 + #{r_p >= r}) / (1 + permutations) ("greater"), "less" or "two-sided"
    (|r_p - mean| >= |r - mean|)."""
    if permutations < 1:
        raise VerilensError("permutations must be at least 1")
    if alternative not in ("greater", "less", "two-sided"):
        raise VerilensError("alternative must be 'greater', 'less' or 'two-sided'")
    prep = prepare_pair(E_a, E_b, metric, zero_rows=zero_rows)
    how = _resolve_method(method, metric, False, backend)
    V = prep.A.shape[0]
    rng = np.random.default_rng(seed)
    perm_list = [rng.permutation(V) for _ in range(permutations)]
    maps = [None] + perm_list
    if how == "closed":
        rs = closed_form_r(prep, metric, maps, batch=batch)
    else:
        be = _resolve_backend(backend, prep.A.device)
        rs = []
        step = max(1, batch) if be in ("blas", "torch") else 1
        for s in range(0, len(maps), step):
            for six in _sums_for(prep, metric, maps[s:s + step], be, tile=tile, seed=seed):
                rs.append(pearson_from_sums(*six))
    r, null = rs[0], np.asarray(rs[1:])
    if alternative == "greater":
        k = int(np.sum(null >= r))
    elif alternative == "less":
        k = int(np.sum(null <= r))
    else:
        mu = null.mean()
        k = int(np.sum(np.abs(null - mu) >= abs(r - mu)))
    return MantelResult(r, (1 + k) / (1 + permutations), permutations, null, metric, V, list(prep.skipped), how)
