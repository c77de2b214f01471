"""Emb2Emb: a ridge (linear) map between two models' (un)embedding spaces.

fit_map(E_a, E_b, alpha) solves, in float64 on the shared tokens' rows,
    W = argmin ||(E_a - mu_a) W - (E_b - mu_b)||_F^2 + alpha ||W||_F^2
      = (X^T X + alpha I)^-1 X^T Y,
so that e_b ~ (e_a - mu_a) W + mu_b. transfer(v, map) carries a vector from model A's
space into model B's: a direction (steering vector, probe direction; the default) maps
as v W, a point (an embedding) as (v - mu_a) W + mu_b. Widths may differ.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import VerilensError
from ._inputs import as_matrix, check_finite, check_pair


@dataclass
class Emb2EmbMap:
    W: torch.Tensor       # [d_a, d_b] float64
    mu_a: torch.Tensor    # [d_a]
    mu_b: torch.Tensor    # [d_b]
    alpha: float
    r2: float             # fraction of B's (centred) variance the map explains on the fit rows
    n_rows: int

    @property
    def d_in(self) -> int:
        return self.W.shape[0]

    @property
    def d_out(self) -> int:
        return self.W.shape[1]

    def __call__(self, v, kind: str = "direction"):
        return transfer(v, self, kind=kind)


def fit_map(E_a, E_b, alpha: float = 1.0, center: bool = True) -> Emb2EmbMap:
    """Ridge map from model A's rows to model B's (rows aligned by token)."""
    if not (alpha >= 0) or not np.isfinite(alpha):
        raise VerilensError(f"alpha must be a finite number >= 0, not {alpha!r}")
    A, B = as_matrix(E_a, "E_a"), as_matrix(E_b, "E_b")
    check_pair(A, B, min_rows=2)
    check_finite(A, "E_a")
    check_finite(B, "E_b")
    X, Y = A.double().cpu(), B.double().cpu()
    mu_a = X.mean(0) if center else torch.zeros(X.shape[1], dtype=torch.float64)
    mu_b = Y.mean(0) if center else torch.zeros(Y.shape[1], dtype=torch.float64)
    X = X - mu_a
    Y = Y - mu_b
    G = X.T @ X
    if alpha == 0 and torch.linalg.matrix_rank(G) < G.shape[0]:
        raise VerilensError("alpha=0 with a rank-deficient E_a (more dimensions than independent rows): use alpha > 0")
    G.diagonal().add_(alpha)
    W = torch.linalg.solve(G, X.T @ Y)
    resid = Y - X @ W
    tot = float((Y * Y).sum())
    r2 = 1.0 - float((resid * resid).sum()) / tot if tot > 0 else float("nan")
    return Emb2EmbMap(W, mu_a, mu_b, float(alpha), r2, A.shape[0])


def heldout_r2(E_a, E_b, alpha: float = 1.0, test_fraction: float = 0.2, seed: int = 0) -> float:
    """R² of the ridge map on rows it was not fitted on (a random `test_fraction` of them).
    The fit-row R² (`Emb2EmbMap.r2`) says little when rows are few next to the width: with
    fewer rows than dimensions any two unrelated matrices fit well."""
    if not 0 < test_fraction < 1:
        raise VerilensError(f"test_fraction must be in (0, 1), not {test_fraction!r}")
    A, B = as_matrix(E_a, "E_a"), as_matrix(E_b, "E_b")
    check_pair(A, B, min_rows=4)
    perm = torch.as_tensor(np.random.default_rng(seed).permutation(A.shape[0]))
    n_test = max(2, int(round(test_fraction * A.shape[0])))
    test, fit = perm[:n_test], perm[n_test:]
    m = fit_map(A[fit], B[fit], alpha=alpha)
    Y = B[test].double().cpu()
    resid = Y - transfer(A[test].double().cpu(), m, kind="point")
    tot = float(((Y - Y.mean(0)) ** 2).sum())
    return 1.0 - float((resid * resid).sum()) / tot if tot > 0 else float("nan")


def transfer(vector, map: Emb2EmbMap, kind: str = "direction"):
    """Carry `vector` ([d_a] or [n, d_a]) from model A's space into model B's.
    Returns the same type (numpy / torch) and dtype as given, shape [d_b] or [n, d_b]."""
    if not isinstance(map, Emb2EmbMap):
        raise VerilensError("map must come from fit_map(E_a, E_b, alpha)")
    if kind not in ("direction", "point"):
        raise VerilensError("kind must be 'direction' (steering vectors, probes) or 'point' (embeddings)")
    is_np = isinstance(vector, np.ndarray)
    v = torch.as_tensor(vector)
    if not v.is_floating_point():
        raise VerilensError(f"vector must be floating point, not {v.dtype}")
    if v.ndim not in (1, 2) or v.shape[-1] != map.d_in:
        raise VerilensError(f"vector must have shape [{map.d_in}] or [n, {map.d_in}] (model A's width); got {tuple(v.shape)}")
    x = v.double().cpu()
    if not bool(torch.isfinite(x).all()):
        raise VerilensError("vector holds NaN or inf")
    out = (x - map.mu_a) @ map.W + map.mu_b if kind == "point" else x @ map.W
    if is_np:
        return out.numpy().astype(vector.dtype, copy=False)
    return out.to(device=v.device, dtype=v.dtype)
