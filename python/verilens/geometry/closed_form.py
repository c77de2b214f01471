"""Exact distance correlation from d x d products: no loop over the V^2 / 2 pairs.

Every metric here writes each model's pair values as
    x_ij = alpha_i + alpha_j + beta v_i . v_j   (+ a constant, which r does not see)
over centred rows v_i (see _Side: unit rows minus their mean for cosine, rows minus
their mean for dot and sqeuclidean). With c = sum_i v_i (~0), n_i = |v_i|^2 and the
d x d products G = V^T V, C = V_a^T V_b, the sums over all ordered (i, j) are

    sum x    = 2 V sum alpha + beta |c|^2
    sum x^2  = 2 V sum alpha^2 + 2 (sum alpha)^2 + 4 beta sum_i alpha_i (v_i . c) + beta^2 |G|_F^2
    sum x y  = 2 V sum alpha gamma + 2 sum alpha sum gamma + 2 beta_b sum_i alpha_i (w_i . c_b)
               + 2 beta_a sum_i gamma_i (v_i . c_a) + beta_a beta_b |C|_F^2

(gamma, w_i, beta_b: model B's), and the pairs i < j are those minus the diagonal
x_ii, halved. So r needs V^T V of each model, V_a^T V_b and row statistics: work
O(V (d_a + d_b)^2), memory O(d_a d_b). A Mantel permutation p relabels B's rows
(w_i -> w_p(i), gamma_i -> gamma_p(i)): one V_a^T V_b[p] product each.

Precision: each block of rows is multiplied in the inputs' dtype (float32 GEMMs run at
BLAS speed) and the d x d blocks are added in float64; the centring, all row statistics
and the final combination are float64. The error analysis is in docs/geometry.md.

Under torchrun, once a process group is initialised (verilens.dist), the row blocks are
split across the ranks (every rank holds both matrices) and the float64 sums are
all-reduced: each block's GEMM is the one-process GEMM, and the mean row is added up block by
block in the one-process order, so only the order in which the ranks' float64 partial sums
meet differs: r agrees with one process to ~1e-15 (tested within 1e-12).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import dist
from ..errors import VerilensError
from ._inputs import Prepared

CLOSED_METRICS = ("cosine", "dot", "sqeuclidean")
_BLOCK = 2048  # rows per GEMM: large enough for BLAS, small enough that a float32 block sum stays accurate


@dataclass
class _Side:
    """One model's pair values written as x_ij = alpha_i + alpha_j + beta v_i . v_j (plus a
    constant, which r does not see) over rows v_i that sum to ~0:
      cosine       v_i = u_i - mu (u unit rows), alpha_i = mu . v_i, beta = 1
      dot          v_i = a_i - mu,               alpha_i = mu . v_i, beta = 1
      sqeuclidean  v_i = a_i - mu,               alpha_i = |v_i|^2,  beta = -2
    with mu about the mean row. The identity holds for any mu (alpha is computed from the
    v as multiplied); centring is what keeps r's digits on anisotropic embeddings."""

    X: torch.Tensor  # [V, d] the input rows
    scale: torch.Tensor | None  # [V] 1 / |row| in the input dtype (cosine) or None
    mu: torch.Tensor  # [d] in the input dtype
    metric: str
    beta: float
    # filled by the first sweep over the rows (float64):
    alpha: torch.Tensor = None  # [V]
    diag: torch.Tensor = None  # [V] x_ii = 2 alpha_i + beta |v_i|^2: not a pair, taken out
    c: torch.Tensor = None  # [d] sum of the v rows as multiplied (~0)
    vt_alpha: torch.Tensor = None  # [d] V^T alpha
    gram: torch.Tensor = None  # [d, d] V^T V

    def block(self, s: int, e: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Rows v_s .. v_e (or the rows `rows`), in the input dtype."""
        x = self.X[s:e] if rows is None else self.X.index_select(0, rows)
        if self.scale is None:
            return x - self.mu
        sc = self.scale[s:e] if rows is None else self.scale.index_select(0, rows)
        return torch.addcmul(-self.mu, x, sc[:, None])

    def add_rows(self, s: int, x64: torch.Tensor) -> torch.Tensor:
        """alpha and the diagonal of the block v_s .. (float64); returns alpha."""
        n = torch.linalg.vector_norm(x64, dim=1) ** 2
        a = n if self.metric == "sqeuclidean" else x64 @ self.mu.double()
        self.alpha[s:s + len(x64)], self.diag[s:s + len(x64)] = a, 2 * a + self.beta * n
        return a

    def add_sums(self, x: torch.Tensor, x64: torch.Tensor, alpha: torch.Tensor, other_alpha: torch.Tensor):
        """c, V^T alpha and V^T V of the block (the vectors in one pass); returns V^T
        (the other model's alpha at these rows)."""
        R = x64.T @ torch.stack([torch.ones_like(alpha), alpha, other_alpha], 1)
        self.c += R[:, 0]
        self.vt_alpha += R[:, 1]
        self.gram += (x.T @ x).double()
        return R[:, 2]

    @property
    def gram_fro2(self) -> float:
        return float((self.gram * self.gram).sum())


def _my_starts(V: int) -> list[int]:
    """The first rows of the blocks this rank multiplies (all of them in one process)."""
    starts = range(0, V, _BLOCK)
    return [starts[k] for k in dist.split(len(starts))]


def _reduce(*tensors) -> None:
    """Sum each tensor over the ranks, in place (float64; nothing in one process)."""
    if not dist.active():
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce_sum(flat)
    o = 0
    for t in tensors:
        t.copy_(flat[o:o + t.numel()].view_as(t))
        o += t.numel()


def _side(X: torch.Tensor, norms: torch.Tensor, metric: str) -> _Side:
    V, d = X.shape
    dev, dt = X.device, X.dtype
    scale = (1.0 / norms).to(dev, dt) if metric == "cosine" else None
    parts = {}
    for s in _my_starts(V):  # the (unit) rows' mean: any mu is exact, a near one keeps digits
        x = X[s:s + _BLOCK]
        parts[s] = (x.T @ scale[s:s + _BLOCK]).double() if scale is not None else x.double().sum(0)
    if dist.active():  # every block's sum, added in the one-process order (mu is rounded to the input dtype)
        parts = {k: v.to(dev) for part in dist.gather({k: v.cpu() for k, v in parts.items()}) for k, v in part.items()}
    mu = torch.zeros(d, dtype=torch.float64, device=dev)
    for s in range(0, V, _BLOCK):
        mu += parts[s]
    side = _Side(X, scale, (mu / V).to(dt), metric, -2.0 if metric == "sqeuclidean" else 1.0)
    z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=dev)  # noqa: E731
    side.alpha, side.diag, side.c, side.vt_alpha, side.gram = z(V), z(V), z(d), z(d), z(d, d)
    return side


@dataclass
class _Cross:
    """What the pair sums need from both models at once, for one relabelling p of B."""

    fro2: float  # |V_a^T V_b[p]|_F^2
    a_dot: float  # sum_i alpha_i (w_p(i) . c_b) = c_b . (W[p]^T alpha)
    b_dot: float  # sum_i gamma_p(i) (v_i . c_a) = c_a . (V_a^T gamma[p])


def _pass(a: _Side, b: _Side, perms: list, first: bool) -> list[_Cross]:
    """One sweep over the row blocks: the cross terms for each map in `perms` (None =
    identity), their B blocks side by side in one GEMM; with `first` (perms = [None]), also
    each model's row statistics and Gram matrix, which later sweeps read."""
    V, da, db, k = a.X.shape[0], a.X.shape[1], b.X.shape[1], len(perms)
    dev = a.X.device
    C = torch.zeros(da, k * db, dtype=torch.float64, device=dev)
    wa = torch.zeros(k, db, dtype=torch.float64, device=dev)  # W[p]^T alpha
    vg = torch.zeros(k, da, dtype=torch.float64, device=dev)  # V_a^T gamma[p]
    for s in _my_starts(V):
        e = min(V, s + _BLOCK)
        x = a.block(s, e)
        ys = [b.block(s, e) if p is None else b.block(s, e, rows=p[s:e]) for p in perms]
        C += (x.T @ (ys[0] if k == 1 else torch.cat(ys, dim=1))).double()
        if first:  # perms == [None]: both models' row statistics, in float64
            x64, y64 = x.double(), ys[0].double()
            al, ga = a.add_rows(s, x64), b.add_rows(s, y64)
            vg[0] += a.add_sums(x, x64, al, ga)
            wa[0] += b.add_sums(ys[0], y64, ga, al)
        else:  # the c-weighted terms (c ~ 0: the input dtype is plenty)
            al = a.alpha[s:e].to(x.dtype)
            gam = torch.stack([b.alpha[p[s:e]] for p in perms], 1).to(x.dtype)
            vg += (x.T @ gam).T.double()
            for i, y in enumerate(ys):
                wa[i] += (y.T @ al).double()
    # under torchrun: the ranks' sums (each rank filled the alpha and diagonal of its rows only)
    stats = [t for side in (a, b) for t in (side.alpha, side.diag, side.c, side.vt_alpha, side.gram)] if first else []
    _reduce(C, wa, vg, *stats)
    return [_Cross(float((C[:, i * db:(i + 1) * db] ** 2).sum()), float(wa[i] @ b.c), float(vg[i] @ a.c))
            for i in range(k)]


def _six(a: _Side, b: _Side, x: _Cross, p: torch.Tensor | None):
    """(pairs, sum x, sum y, sum x^2, sum y^2, sum x y) over i < j, B relabelled by p: the
    sums over all (i, j) (module doc), minus the diagonal, halved."""
    V = a.X.shape[0]
    al, d = a.alpha, a.diag
    ga, e = (b.alpha, b.diag) if p is None else (b.alpha[p], b.diag[p])
    Sa, Sg = float(al.sum()), float(ga.sum())
    f1a = 2 * V * Sa + a.beta * float(a.c @ a.c)
    f1b = 2 * V * Sg + b.beta * float(b.c @ b.c)
    f2a = 2 * V * float(al @ al) + 2 * Sa * Sa + 4 * a.beta * float(a.vt_alpha @ a.c) + a.beta ** 2 * a.gram_fro2
    f2b = 2 * V * float(ga @ ga) + 2 * Sg * Sg + 4 * b.beta * float(b.vt_alpha @ b.c) + b.beta ** 2 * b.gram_fro2
    f12 = (2 * V * float(al @ ga) + 2 * Sa * Sg + 2 * b.beta * x.a_dot + 2 * a.beta * x.b_dot
           + a.beta * b.beta * x.fro2)
    half = lambda full, diag: (full - float(diag)) / 2  # noqa: E731
    return (V * (V - 1) / 2, half(f1a, d.sum()), half(f1b, e.sum()), half(f2a, d @ d), half(f2b, e @ e),
            half(f12, d @ e))


def pearson_from_sums(n, sx, sy, sxx, syy, sxy) -> float:
    vx = sxx - sx * sx / n
    vy = syy - sy * sy / n
    # a variance at the rounding level of the moments it comes from is no variance
    if not (vx > 1e-12 * abs(sxx) and vy > 1e-12 * abs(syy)):
        raise VerilensError(
            "the pairwise distances of one model are all equal (zero variance): the correlation is "
            "undefined; check that the embeddings are not constant or duplicated rows")
    return (sxy - sx * sy / n) / math.sqrt(vx * vy)


def closed_form_r(prep: Prepared, metric: str, perms=(None,), batch: int = 8) -> list[float]:
    """Pearson r over all pairs for each B row map in `perms` (None = identity; the first
    must be None), for a metric in CLOSED_METRICS (checked by the caller)."""
    a = _side(prep.A, prep.norms_a, metric)
    b = _side(prep.B, prep.norms_b, metric)
    if perms[0] is not None:
        raise ValueError("closed_form_r: the first map must be the identity (None)")
    maps = [torch.as_tensor(np.asarray(p), dtype=torch.int64, device=prep.A.device) for p in perms[1:]]
    # the first sweep fills both models' row statistics; the permutations read B's
    (cross,) = _pass(a, b, [None], first=True)
    out = [pearson_from_sums(*_six(a, b, cross, None))]
    for s in range(0, len(maps), max(1, batch)):
        chunk = maps[s:s + max(1, batch)]
        for p, cross in zip(chunk, _pass(a, b, chunk, first=False)):
            out.append(pearson_from_sums(*_six(a, b, cross, p)))
    return out
