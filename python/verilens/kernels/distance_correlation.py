"""The distance correlation's Pearson sums: two registered ops and the GPU kernel.

    torch.ops.verilens.dcor_tile_sums    six sums over one Gram tile (CPU: the compiled
                                         core's vectorised reduction; CUDA: torch, float64)
    torch.ops.verilens.dcor_stream_sums  six sums over all pairs in one fused pass (CPU: the
                                         compiled core's cache-blocked kernel; CUDA: the
                                         Triton kernel below)

The Triton kernel:

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
from typing import Optional

import torch

from verilens.errors import VerilensError
from verilens.kernels._launch import fp32_dot_precision, interpreting, require_kernel_device

COSINE, EUCLIDEAN = 0, 1
METRICS = {"cosine": COSINE, "euclidean": EUCLIDEAN}


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
                        block=None) -> torch.Tensor:
    """The six sums (n, Sx, Sy, Sxx, Syy, Sxy) by the Triton kernel, a float64 [6] tensor
    on A's device.

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
    return launch(cfg).view(-1, 6).sum(dim=0)


# ----------------------------------------------------------------------------------
# The registered ops
def _core():
    try:
        from verilens import _core

        return _core if hasattr(_core, "geometry_tile_sums") else None
    except ImportError:
        return None


def _metric(op, metric) -> int:
    if metric not in METRICS:
        raise VerilensError(f"{op}: metric must be one of {sorted(METRICS)}, got {metric!r}")
    return METRICS[metric]


def _check_tile(ga, gb, wa_rows, wa_cols, wb_rows, wb_cols):
    op = "dcor_tile_sums"
    if not isinstance(ga, torch.Tensor) or ga.dim() != 2:
        raise VerilensError(f"{op}: ga must be a [rows, cols] Gram tile, got {getattr(ga, 'shape', type(ga))}")
    m, n = ga.shape
    for name, t, want in (("gb", gb, (m, n)), ("wa_rows", wa_rows, (m,)), ("wa_cols", wa_cols, (n,)),
                          ("wb_rows", wb_rows, (m,)), ("wb_cols", wb_cols, (n,))):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
            raise VerilensError(f"{op}: {name} must be {list(want)}, got {list(getattr(t, 'shape', []))}")
        if t.device != ga.device:
            raise VerilensError(f"{op}: {name} is on {t.device}, ga on {ga.device}: put them on one device")
    if gb.dtype != ga.dtype or not ga.is_floating_point():
        raise VerilensError(f"{op}: ga and gb must share one floating dtype, got {ga.dtype} and {gb.dtype}")


def _tile_ref(ga, gb, wa_rows, wa_cols, wb_rows, wb_cols, i0, j0, upper, metric, cx, cy):
    ga, gb = ga.double(), gb.double()
    nar, nac, nbr, nbc = (t.double() for t in (wa_rows, wa_cols, wb_rows, wb_cols))
    if metric == COSINE:
        x = (1.0 - cx) - ga * nar[:, None] * nac[None, :]
        y = (1.0 - cy) - gb * nbr[:, None] * nbc[None, :]
    else:
        x = torch.sqrt(torch.clamp(nar[:, None] + nac[None, :] - 2.0 * ga, min=0.0)) - cx
        y = torch.sqrt(torch.clamp(nbr[:, None] + nbc[None, :] - 2.0 * gb, min=0.0)) - cy
    m, n = ga.shape
    if upper:
        keep = (torch.arange(j0, j0 + n, device=ga.device)[None, :]
                > torch.arange(i0, i0 + m, device=ga.device)[:, None]).double()
        x, y, cnt = x * keep, y * keep, keep.sum()
    else:
        cnt = torch.tensor(float(m * n), dtype=torch.float64, device=ga.device)
    # torch.sum on CPU uses pairwise (cascade) summation
    return torch.stack([cnt, x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()])


@torch.library.custom_op("verilens::dcor_tile_sums", mutates_args=())
def tile_sums_op(ga: torch.Tensor, gb: torch.Tensor, wa_rows: torch.Tensor, wa_cols: torch.Tensor,
                 wb_rows: torch.Tensor, wb_cols: torch.Tensor, i0: int, j0: int, upper: bool, metric: int,
                 cx: float, cy: float) -> torch.Tensor:
    core = _core()
    if core is None:
        return _tile_ref(ga, gb, wa_rows, wa_cols, wb_rows, wb_cols, i0, j0, upper, metric, cx, cy)
    six = core.geometry_tile_sums(ga.numpy(), gb.numpy(), i0, j0, upper, metric, wa_rows.double().numpy(),
                                  wa_cols.double().numpy(), wb_rows.double().contiguous().numpy(),
                                  wb_cols.double().contiguous().numpy(), cx, cy)
    return torch.tensor(six, dtype=torch.float64)


@tile_sums_op.register_kernel("cuda")
def _tile_cuda(ga, gb, wa_rows, wa_cols, wb_rows, wb_cols, i0, j0, upper, metric, cx, cy):
    return _tile_ref(ga, gb, wa_rows, wa_cols, wb_rows, wb_cols, i0, j0, upper, metric, cx, cy)


@tile_sums_op.register_fake
def _tile_fake(ga, gb, wa_rows, wa_cols, wb_rows, wb_cols, i0, j0, upper, metric, cx, cy):
    return ga.new_empty((6,), dtype=torch.float64)


def tile_sums(ga, gb, wa_rows, wa_cols, wb_rows, wb_cols, *, i0, j0, upper, metric, cx, cy):
    _check_tile(ga, gb, wa_rows, wa_cols, wb_rows, wb_cols)
    return torch.ops.verilens.dcor_tile_sums(ga, gb, wa_rows, wa_cols, wb_rows, wb_cols, int(i0), int(j0),
                                             bool(upper), _metric("dcor_tile_sums", metric), float(cx), float(cy))


def tile_sums_ref(ga, gb, wa_rows, wa_cols, wb_rows, wb_cols, *, i0, j0, upper, metric, cx, cy):
    _check_tile(ga, gb, wa_rows, wa_cols, wb_rows, wb_cols)
    return _tile_ref(ga, gb, wa_rows, wa_cols, wb_rows, wb_cols, int(i0), int(j0), bool(upper),
                     _metric("dcor_tile_sums", metric), float(cx), float(cy))


def _check_stream(A, B, wa, wb, perm):
    op = "dcor_stream_sums"
    if not isinstance(A, torch.Tensor) or not isinstance(B, torch.Tensor) or A.dim() != 2 or B.dim() != 2:
        raise VerilensError(f"{op}: A and B must be [V, d] matrices")
    V = A.shape[0]
    if B.shape[0] != V or A.dtype != B.dtype or not A.is_floating_point():
        raise VerilensError(f"{op}: A {list(A.shape)} {A.dtype} and B {list(B.shape)} {B.dtype} need the same rows "
                            "and one floating dtype")
    for name, t in (("wa", wa), ("wb", wb)) + ((("perm", perm),) if perm is not None else ()):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (V,):
            raise VerilensError(f"{op}: {name} must be [{V}], got {list(getattr(t, 'shape', []))}")
    for name, t in (("B", B), ("wa", wa), ("wb", wb), ("perm", perm)):
        if t is not None and t.device != A.device:
            raise VerilensError(f"{op}: {name} is on {t.device}, A on {A.device}: put them on one device")


def _stream_ref(A, B, wa, wb, perm, metric, cx, cy, tile=1024):
    """The same sums with torch tiles (float64 reductions)."""
    V = A.shape[0]
    Bp = B if perm is None else B[perm]
    wbp = wb if perm is None else wb[perm]
    total = torch.zeros(6, dtype=torch.float64, device=A.device)
    for i0 in range(0, V, tile):
        for j0 in range(i0, V, tile):
            ga = A[i0:i0 + tile] @ A[j0:j0 + tile].T
            gb = Bp[i0:i0 + tile] @ Bp[j0:j0 + tile].T
            total += _tile_ref(ga, gb, wa[i0:i0 + tile], wa[j0:j0 + tile], wbp[i0:i0 + tile], wbp[j0:j0 + tile],
                               i0, j0, j0 == i0, metric, cx, cy)
    return total


@torch.library.custom_op("verilens::dcor_stream_sums", mutates_args=())
def stream_sums_op(A: torch.Tensor, B: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor, perm: Optional[torch.Tensor],
                   metric: int, cx: float, cy: float) -> torch.Tensor:
    core = _core()
    if core is None:
        return _stream_ref(A, B, wa, wb, perm, metric, cx, cy)
    pn = None if perm is None else perm.contiguous().numpy()
    six = core.geometry_stream_sums(A.contiguous().numpy(), B.contiguous().numpy(), pn, metric,
                                    wa.double().numpy(), wb.double().numpy(), cx, cy, 48)
    return torch.tensor(six, dtype=torch.float64)


@stream_sums_op.register_kernel("cuda")
def _stream_cuda(A, B, wa, wb, perm, metric, cx, cy):
    return pearson_sums_triton(A.contiguous(), B.contiguous(), metric, wa, wb, cx, cy, perm=perm)


@stream_sums_op.register_fake
def _stream_fake(A, B, wa, wb, perm, metric, cx, cy):
    return A.new_empty((6,), dtype=torch.float64)


def stream_sums(A, B, wa, wb, *, metric, cx, cy, perm=None):
    _check_stream(A, B, wa, wb, perm)
    return torch.ops.verilens.dcor_stream_sums(A, B, wa, wb, perm, _metric("dcor_stream_sums", metric),
                                               float(cx), float(cy))


def stream_sums_ref(A, B, wa, wb, *, metric, cx, cy, perm=None):
    _check_stream(A, B, wa, wb, perm)
    return _stream_ref(A, B, wa, wb, perm, _metric("dcor_stream_sums", metric), float(cx), float(cy))


def stream_sums_triton(A, B, wa, wb, *, metric, cx, cy, perm=None, block=None):
    _check_stream(A, B, wa, wb, perm)
    require_kernel_device("dcor_stream_sums", A)
    return pearson_sums_triton(A.contiguous(), B.contiguous(), _metric("dcor_stream_sums", metric), wa, wb,
                               float(cx), float(cy), perm=perm, block=block)
