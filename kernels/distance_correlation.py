"""Streaming distance correlation on the GPU: one Triton kernel.

Each program takes one tile (rows I, columns J, J >= I) of the token x token plane,
computes both models' Gram tiles with tensor-core dots (`tl.dot`), turns them into
cosine or Euclidean distances, and reduces the five Pearson sums of the shifted
distances x = d_A - cx, y = d_B - cy (plus the pair count) over the pairs i < j in
float64 registers. Only those six partial sums per tile reach memory; the host adds
the partials in float64. The distance matrices never exist.

`distance_correlation_ref` / `pearson_sums_ref` are the torch references (float64,
materialising: small inputs only).

Triton is imported on first use. Under TRITON_INTERPRET=1 the kernel runs on CPU
tensors (tests); there bf16/fp16 inputs are upcast to float32 before `tl.dot` (the
interpreter's bf16 dot is wrong) and autotuning is replaced by one fixed config.
fp32 inputs are dotted in full precision unless torch allows TF32 matmuls
(`torch.backends.cuda.matmul.allow_tf32`), as torch's own fp32 matmuls are.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from verilens.kernels._env import fp32_dot_precision, interpreting

COSINE, EUCLIDEAN = 0, 1


# ----------------------------------------------------------------------------------
# References
def _dist_matrix_ref(X: torch.Tensor, metric: str) -> torch.Tensor:
    X = X.double()
    if metric == "cosine":
        Xn = X / torch.linalg.vector_norm(X, dim=1, keepdim=True)
        D = 1.0 - Xn @ Xn.T
    elif metric == "euclidean":
        D = torch.cdist(X, X, compute_mode="donot_use_mm_for_euclid_dist")
    else:
        raise ValueError(metric)
    return D


def pearson_sums_ref(A, B, metric: str = "cosine", cx: float = 0.0, cy: float = 0.0, perm=None):
    """(n, Sx, Sy, Sxx, Syy, Sxy) over pairs i < j of x = d_A(i,j) - cx and
    y = d_B(p(i), p(j)) - cy, in float64, materialising both distance matrices."""
    A, B = torch.as_tensor(A), torch.as_tensor(B)
    if perm is not None:
        B = B[torch.as_tensor(perm, device=B.device)]
    V = A.shape[0]
    iu = torch.triu_indices(V, V, offset=1, device=A.device)
    x = _dist_matrix_ref(A, metric)[iu[0], iu[1]] - cx
    y = _dist_matrix_ref(B, metric)[iu[0], iu[1]] - cy
    return (float(x.numel()), float(x.sum()), float(y.sum()), float((x * x).sum()),
            float((y * y).sum()), float((x * y).sum()))


def distance_correlation_ref(A, B, metric: str = "cosine") -> float:
    """Pearson correlation of the two pairwise distance matrices over pairs i < j."""
    A, B = torch.as_tensor(A), torch.as_tensor(B)
    V = A.shape[0]
    iu = torch.triu_indices(V, V, offset=1, device=A.device)
    x = _dist_matrix_ref(A, metric)[iu[0], iu[1]]
    y = _dist_matrix_ref(B, metric)[iu[0], iu[1]]
    x = x - x.mean()
    y = y - y.mean()
    return float((x * y).sum() / torch.sqrt((x * x).sum() * (y * y).sum()))


# ----------------------------------------------------------------------------------
# Kernel


@lru_cache(maxsize=2)
def _build(interpret: bool):
    import triton
    import triton.language as tl

    @triton.jit
    def _dcor_tile_kernel(
        A, B, PERM, WA, WB, OUT,
        V, DA, DB, stride_a, stride_b,
        cx, cy,
        METRIC: tl.constexpr, HAS_PERM: tl.constexpr, UPCAST: tl.constexpr,
        ACC_F64: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        n_tiles_n = tl.num_programs(1)
        if pid_n * BLOCK_N + BLOCK_N - 1 > pid_m * BLOCK_M:  # tile holds some pair i < j
            rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            mm = rm < V
            mn = rn < V
            rk = tl.arange(0, BLOCK_K)
            if HAS_PERM:
                pm = tl.load(PERM + rm, mask=mm, other=0)
                pn = tl.load(PERM + rn, mask=mn, other=0)
            else:
                pm = rm
                pn = rn
            if ACC_F64:
                ga = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
                gb = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
            else:
                ga = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                gb = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k in range(0, DA, BLOCK_K):
                kk = k + rk
                km = kk < DA
                x = tl.load(A + rm[:, None] * stride_a + kk[None, :], mask=mm[:, None] & km[None, :], other=0.0)
                yt = tl.load(A + rn[None, :] * stride_a + kk[:, None], mask=mn[None, :] & km[:, None], other=0.0)
                if UPCAST:
                    x = x.to(tl.float32)
                    yt = yt.to(tl.float32)
                ga += tl.dot(x, yt, input_precision=PREC)
            for k in range(0, DB, BLOCK_K):
                kk = k + rk
                km = kk < DB
                x = tl.load(B + pm[:, None] * stride_b + kk[None, :], mask=mm[:, None] & km[None, :], other=0.0)
                yt = tl.load(B + pn[None, :] * stride_b + kk[:, None], mask=mn[None, :] & km[:, None], other=0.0)
                if UPCAST:
                    x = x.to(tl.float32)
                    yt = yt.to(tl.float32)
                gb += tl.dot(x, yt, input_precision=PREC)
            wam = tl.load(WA + rm, mask=mm, other=0.0)
            wan = tl.load(WA + rn, mask=mn, other=0.0)
            wbm = tl.load(WB + pm, mask=mm, other=0.0)
            wbn = tl.load(WB + pn, mask=mn, other=0.0)
            ga64 = ga.to(tl.float64)
            gb64 = gb.to(tl.float64)
            if METRIC == 0:
                da = 1.0 - ga64 * wam[:, None] * wan[None, :]
                db = 1.0 - gb64 * wbm[:, None] * wbn[None, :]
            else:
                da = tl.sqrt(tl.maximum(wam[:, None] + wan[None, :] - 2.0 * ga64, 0.0))
                db = tl.sqrt(tl.maximum(wbm[:, None] + wbn[None, :] - 2.0 * gb64, 0.0))
            valid = (rm[:, None] < rn[None, :]) & mm[:, None] & mn[None, :]
            xs = tl.where(valid, da - cx, 0.0)
            ys = tl.where(valid, db - cy, 0.0)
            cnt = tl.sum(tl.sum(valid.to(tl.float64), axis=1), axis=0)
            sx = tl.sum(tl.sum(xs, axis=1), axis=0)
            sy = tl.sum(tl.sum(ys, axis=1), axis=0)
            sxx = tl.sum(tl.sum(xs * xs, axis=1), axis=0)
            syy = tl.sum(tl.sum(ys * ys, axis=1), axis=0)
            sxy = tl.sum(tl.sum(xs * ys, axis=1), axis=0)
            o = OUT + (pid_m * n_tiles_n + pid_n) * 6
            tl.store(o + 0, cnt)
            tl.store(o + 1, sx)
            tl.store(o + 2, sy)
            tl.store(o + 3, sxx)
            tl.store(o + 4, syy)
            tl.store(o + 5, sxy)

    return _dcor_tile_kernel


def _configs(dtype: torch.dtype):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) candidates for the GPU."""
    if dtype == torch.float64:
        return [(64, 64, 16, 4, 2), (32, 64, 32, 4, 2)]
    return [(128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (128, 64, 64, 4, 3), (64, 64, 64, 4, 4)]


_TUNED: dict = {}


def pearson_sums_triton(A: torch.Tensor, B: torch.Tensor, metric: int, wa: torch.Tensor,
                        wb: torch.Tensor, cx: float = 0.0, cy: float = 0.0, perm=None,
                        block=None):
    """The six sums (n, Sx, Sy, Sxx, Syy, Sxy) by the Triton kernel.

    A: [V, DA], B: [rows, DB] (same dtype, unit stride along the feature axis);
    wa/wb float64: inverse norms (cosine) or squared norms (euclidean); perm: int64
    row map for B (Mantel), or None. `block` = (BLOCK_M, BLOCK_N, BLOCK_K[, warps,
    stages]) fixes the config; otherwise the GPU picks the fastest of a few
    (timed once per shape class), the interpreter uses 16x16x16."""
    import triton

    interp = interpreting()
    kern = _build(interp)
    V, DA = A.shape
    DB = B.shape[1]
    assert A.stride(1) == 1 and B.stride(1) == 1 and A.dtype == B.dtype
    upcast = A.dtype in (torch.bfloat16, torch.float16) and interp
    prec = fp32_dot_precision(interp)
    acc64 = A.dtype == torch.float64
    perm_t = perm if perm is not None else torch.zeros(1, dtype=torch.int64, device=A.device)
    wa = wa.to(device=A.device, dtype=torch.float64).contiguous()
    wb = wb.to(device=A.device, dtype=torch.float64).contiguous()

    def launch(cfg):
        bm, bn, bk = cfg[:3]
        extra = {} if interp or len(cfg) < 5 else {"num_warps": cfg[3], "num_stages": cfg[4]}
        gm, gn = triton.cdiv(V, bm), triton.cdiv(V, bn)
        out = torch.zeros(gm * gn * 6, dtype=torch.float64, device=A.device)
        kern[(gm, gn)](A, B, perm_t, wa, wb, out, V, DA, DB, A.stride(0), B.stride(0),
                       float(cx), float(cy), METRIC=int(metric), HAS_PERM=perm is not None,
                       UPCAST=upcast, ACC_F64=acc64, PREC=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, **extra)
        return out

    if block is not None:
        cfg = tuple(block)
    elif interp:
        cfg = (16, 16, 16)
    else:  # autotune needs the GPU driver: only here, never in the interpreter
        key = (A.dtype, int(metric), DA > 1024, perm is not None, prec)
        if key not in _TUNED:
            from triton.testing import do_bench

            n = min(V, 8192)
            best = None
            for c in _configs(A.dtype):
                try:
                    t = do_bench(lambda c=c: pearson_sums_triton(A[:n], B, metric, wa[:n], wb, cx, cy,
                                                                  None if perm is None else perm[:n], block=c))
                except Exception:  # noqa: BLE001  (config does not fit this card)
                    continue
                if best is None or t < best[0]:
                    best = (t, c)
            _TUNED[key] = best[1] if best else (64, 64, 32, 4, 2)
        cfg = _TUNED[key]
    out = launch(cfg).view(-1, 6)
    s = out.sum(dim=0).cpu()
    return tuple(float(v) for v in s)
