"""Input checks shared by the geometry functions: every problem a user can cause is a
VerilensError that names the rows at fault and says what to do."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import VerilensError

METRICS = ("cosine", "dot", "sqeuclidean", "euclidean")


class GeometryWarning(UserWarning):
    """A reported, counted skip (e.g. zero-norm rows dropped under the cosine metric)."""


def _name_rows(idx, limit: int = 10) -> str:
    idx = [int(i) for i in idx]
    shown = ", ".join(str(i) for i in idx[:limit])
    return shown + (f", ... ({len(idx)} rows in all)" if len(idx) > limit else "")


def as_matrix(E, name: str) -> torch.Tensor:
    """A 2-D float32/float64 torch tensor view of `E` (numpy array or torch tensor;
    no copy when it already is one). float16/bfloat16 are widened to float32 (exact)."""
    if isinstance(E, torch.Tensor):
        t = E.detach()
    elif isinstance(E, np.ndarray):
        if E.dtype.kind not in "fiub" or E.dtype == np.float16:
            if E.dtype == np.float16:
                t = torch.from_numpy(E.astype(np.float32))
            else:
                raise VerilensError(f"{name} has dtype {E.dtype}; pass a float32 or float64 array")
        else:
            t = torch.from_numpy(np.ascontiguousarray(E) if not E.flags.c_contiguous else E)
    else:
        try:
            t = torch.as_tensor(np.asarray(E))
        except Exception as e:  # noqa: BLE001
            raise VerilensError(f"{name} must be a 2-D numpy array or torch tensor, not {type(E).__name__}") from e
    if t.ndim != 2:
        raise VerilensError(f"{name} must be 2-D [tokens, dim]; got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise VerilensError(
            f"{name} has dtype {t.dtype}; embeddings must be floating point "
            f"(convert with .float() / .astype(np.float32))")
    if t.dtype in (torch.float16, torch.bfloat16) and t.device.type == "cpu":
        t = t.float()
    if t.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise VerilensError(f"{name} has unsupported dtype {t.dtype}; use float32 or float64")
    if t.shape[1] == 0:
        raise VerilensError(f"{name} has zero columns: an embedding needs at least one dimension")
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t


def check_pair(A: torch.Tensor, B: torch.Tensor, names=("E_a", "E_b"), min_rows: int = 3):
    if A.shape[0] != B.shape[0]:
        raise VerilensError(
            f"{names[0]} has {A.shape[0]} rows but {names[1]} has {B.shape[0]}: rows must be aligned by "
            f"token (index both with the ids from shared_vocab: E_a[idx_a], E_b[idx_b])")
    if A.dtype != B.dtype:
        raise VerilensError(
            f"dtype mix: {names[0]} is {A.dtype} and {names[1]} is {B.dtype}; cast both to one dtype "
            f"(e.g. E_b.to(E_a.dtype) or E_b.astype(np.float32)) so the comparison is like for like")
    if A.device != B.device:
        raise VerilensError(f"{names[0]} is on {A.device} and {names[1]} on {B.device}; move both to one device")
    if A.shape[0] < min_rows:
        raise VerilensError(
            f"only {A.shape[0]} aligned tokens: at least {min_rows} are needed for a correlation between "
            f"distance matrices (a correlation needs at least 2 pairs); check the shared vocabulary")


def check_finite(X: torch.Tensor, name: str, block: int = 8192):
    """Raise naming the rows holding NaN or inf."""
    bad = []
    for s in range(0, X.shape[0], block):
        ok = torch.isfinite(X[s:s + block]).all(dim=1)
        if not bool(ok.all()):
            bad.extend((torch.nonzero(~ok).flatten() + s).tolist())
    if bad:
        raise VerilensError(
            f"{name} has NaN or inf in rows {_name_rows(bad)}; drop or repair those tokens first "
            f"(e.g. keep = np.isfinite(E).all(1))")


def row_norms64(X: torch.Tensor, block: int = 8192) -> torch.Tensor:
    """Row norms in float64 without a float64 copy of X."""
    out = torch.empty(X.shape[0], dtype=torch.float64, device=X.device)
    for s in range(0, X.shape[0], block):
        out[s:s + block] = torch.linalg.vector_norm(X[s:s + block], dim=1, dtype=torch.float64)
    return out


def check_finite_by_norms(X: torch.Tensor, norms: torch.Tensor, name: str):
    """A row holds NaN or inf exactly when its float64 norm is not finite (float32 rows
    cannot overflow a float64 norm); only then is the row-wise check run to name them."""
    if bool(torch.isfinite(norms).all()):
        return
    check_finite(X, name)
    bad = torch.nonzero(~torch.isfinite(norms)).flatten().tolist()
    raise VerilensError(f"{name} rows {_name_rows(bad)} are too large: their norm overflows float64; rescale E")


@dataclass
class Prepared:
    A: torch.Tensor
    B: torch.Tensor
    kept: np.ndarray | None = None        # row indices kept (None: all)
    skipped: list = field(default_factory=list)  # row indices dropped (zero norm)
    norms_a: torch.Tensor | None = None
    norms_b: torch.Tensor | None = None


def prepare_pair(E_a, E_b, metric: str, zero_rows: str = "raise", min_rows: int = 3) -> Prepared:
    """Validate two row-aligned matrices; under the cosine metric handle zero-norm rows
    ("raise": error naming them; "skip": drop them from both sides, warn with the count)."""
    if metric not in METRICS:
        raise VerilensError(f"unknown metric {metric!r}; use one of {METRICS}")
    if zero_rows not in ("raise", "skip"):
        raise VerilensError(f"zero_rows must be 'raise' or 'skip', not {zero_rows!r}")
    A, B = as_matrix(E_a, "E_a"), as_matrix(E_b, "E_b")
    check_pair(A, B, min_rows=min_rows)
    na, nb = row_norms64(A), row_norms64(B)
    check_finite_by_norms(A, na, "E_a")
    check_finite_by_norms(B, nb, "E_b")
    prep = Prepared(A, B, norms_a=na, norms_b=nb)
    if metric == "cosine":
        zero = (na == 0) | (nb == 0)
        if bool(zero.any()):
            idx = torch.nonzero(zero).flatten().cpu().numpy()
            where = []
            if bool((na == 0).any()):
                where.append("E_a")
            if bool((nb == 0).any()):
                where.append("E_b")
            if zero_rows == "raise":
                raise VerilensError(
                    f"{len(idx)} zero-norm rows in {' and '.join(where)} (rows {_name_rows(idx)}): the cosine "
                    f"distance is undefined there; pass zero_rows='skip' to drop them (counted), or use "
                    f"metric='euclidean'")
            keep = torch.nonzero(~zero).flatten()
            warnings.warn(f"skipped {len(idx)} zero-norm rows under the cosine metric (rows {_name_rows(idx)})",
                          GeometryWarning, stacklevel=3)
            prep = Prepared(A[keep], B[keep], kept=keep.cpu().numpy(), skipped=idx.tolist(),
                            norms_a=na[keep], norms_b=nb[keep])
    if prep.A.shape[0] < min_rows:
        raise VerilensError(
            f"only {prep.A.shape[0]} usable aligned tokens (after {len(prep.skipped)} skipped): at least "
            f"{min_rows} are needed; check the shared vocabulary")
    return prep
