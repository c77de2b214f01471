"""Head-masked attention output projection, optionally emitting per-head outputs.

    z'[b,p,h,:]  = s[b,p,h] * z[b,p,h,:] + (1 - s[b,p,h]) * fill[h,:]     (the ablation)
    out[b,p,:]   = sum_h z'[b,p,h,:] @ W_O[h] (+ bias)                     (o_proj)
    result[b,k,h,:] = z'[b, pos[b,k], h, :] @ W_O[h]                       (attn.hook_result)

`z` is the o_proj input ([batch, pos, n_heads*d_head] or [batch, pos, n_heads, d_head]),
`weight` the nn.Linear weight [d_model, n_heads*d_head]. `scale` is per head [H] or per
position [batch, pos, H] (1 keeps a head, 0 ablates it, other values interpolate towards
`fill`); `where` [batch, pos] limits a per-head scale to some positions; `fill` (default
0) is what an ablated head's z becomes, a float or [H, d_head] (mean ablation). Where s is
exactly 1 or 0, z' is exactly z or fill, so the result equals editing hook_z by hand.

One Triton launch does everything: the grid holds the o_proj tiles (a grouped GEMM over
the concatenated heads) followed by the capture tiles (gathered rows x d_model tiles x
heads), which re-read only the selected rows of z. The ablation is built to add nothing
to the GEMM:
- a per-head 0/1 mask (every position) makes the K loop walk only the kept heads (fewer
  FLOPs than the plain matmul; the kept-head list sits in registers so the loop is
  software-pipelined exactly like the plain GEMM, checked by tests/kernels/
  test_gpu_compile.py); dropped heads with a fill add a constant row vector
  sum_h fill_h @ W_O[h] in the epilogue, like a bias;
- a per-position or fractional scale is applied to the z tile in registers before the
  dot (one multiply per loaded element).
How close the GEMM itself comes to cuBLAS is for benchmarks/bench_kernels.py to measure
on a GPU (autotuned tiles per power-of-two bucket of rows).

`head_masked_o_proj_ref` is the torch reference: it edits z exactly as a hand edit of
hook_z would and then calls F.linear, so on CPU it gives the plain model's numbers.

Triton is imported on first use. Under TRITON_INTERPRET=1 the kernel runs on CPU tensors
(tests): bf16 operands are upcast to fp32 before `tl.dot` (the interpreter's bf16 dot is
wrong) and one fixed config replaces autotuning (which needs a GPU driver).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F

from verilens.errors import VerilensError
from verilens.kernels._env import fp32_dot_precision, interpreting


class HeadMaskedOProjOutput(NamedTuple):
    out: torch.Tensor  # [batch, pos, d_model]
    result: torch.Tensor | None  # [batch, k, n_heads, d_model] or None


# ----------------------------------------------------------------------------------
# Argument checking, shared by the reference and the kernel
@dataclass
class _Args:
    z: torch.Tensor  # [B, P, H*dh] (a view of the input where possible)
    weight: torch.Tensor  # [N, H*dh]
    bias: torch.Tensor | None
    B: int
    P: int
    H: int
    dh: int
    N: int
    squeeze: bool  # input was 2-D [pos, H*dh]
    scale: torch.Tensor | None  # float32, [H] or [B, P, H]
    scale_host: torch.Tensor | None  # the same on the CPU when the caller gave it there
    where: torch.Tensor | None  # bool [B, P] (only with a per-head scale)
    fill: torch.Tensor | None  # float32 [H, dh]
    positions: torch.Tensor | None  # long [B, K]


_ON_DEVICE: OrderedDict = OrderedDict()  # small host parameters' device copies, by value


def _cached(key, make):
    t = _ON_DEVICE.get(key)
    if t is None:
        t = _ON_DEVICE[key] = make()
        if len(_ON_DEVICE) > 256:
            _ON_DEVICE.popitem(last=False)
    else:
        _ON_DEVICE.move_to_end(key)
    return t


def _param(x, dev, what):
    """(float32 tensor on `dev`, its host copy or None). Host values (numbers, lists, CPU
    tensors) are checked on the host and their device copies cached by value, so calling
    again with the same scale/fill costs no transfer and no device sync; CUDA tensors are
    checked on the device (one sync)."""
    if isinstance(x, torch.Tensor) and x.device.type != "cpu":
        t = x.to(device=dev, dtype=torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise VerilensError(f"head_masked_o_proj: {what} contains NaN or inf")
        return t, None
    try:
        host = torch.as_tensor(x, dtype=torch.float32).contiguous()
    except (TypeError, ValueError, RuntimeError) as e:
        raise VerilensError(f"head_masked_o_proj: {what} must be numbers, got {type(x).__name__}") from e
    if not bool(torch.isfinite(host).all()):
        raise VerilensError(f"head_masked_o_proj: {what} contains NaN or inf")
    if dev.type == "cpu":
        return host, host
    return _cached((str(dev), "f32", tuple(host.shape), host.numpy().tobytes()), lambda: host.to(dev)), host


def _index_on(dev, idx):
    return _cached((str(dev), "i32", tuple(idx)), lambda: torch.tensor(list(idx), dtype=torch.int32, device=dev))


def _check(z, weight, bias, n_heads, scale, fill, where, result_positions) -> _Args:
    if not isinstance(z, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise VerilensError("head_masked_o_proj: z and weight must be tensors")
    squeeze = False
    if z.dim() == 4:
        B, P, H, dh = z.shape
        if n_heads is not None and n_heads != H:
            raise VerilensError(f"head_masked_o_proj: z has {H} heads but n_heads={n_heads}")
        z = z.reshape(B, P, H * dh)
    elif z.dim() in (2, 3):
        if z.dim() == 2:
            z, squeeze = z[None], True
        if n_heads is None:
            raise VerilensError("head_masked_o_proj: z is [batch, pos, n_heads*d_head]; pass n_heads "
                                "(or give z as [batch, pos, n_heads, d_head])")
        B, P, HD = z.shape
        H = int(n_heads)
        if H <= 0 or HD % H:
            raise VerilensError(f"head_masked_o_proj: width {HD} is not a multiple of n_heads={n_heads}")
        dh = HD // H
    else:
        raise VerilensError(f"head_masked_o_proj: z must be [batch, pos, n_heads*d_head] or "
                            f"[batch, pos, n_heads, d_head], got shape {tuple(z.shape)}")
    if weight.dim() != 2 or weight.shape[1] != H * dh:
        raise VerilensError(f"head_masked_o_proj: weight must be the o_proj weight [d_model, {H * dh}], "
                            f"got shape {tuple(weight.shape)}")
    if weight.dtype != z.dtype or weight.device != z.device:
        raise VerilensError(f"head_masked_o_proj: z ({z.dtype}, {z.device}) and weight ({weight.dtype}, "
                            f"{weight.device}) must share dtype and device")
    if not z.is_floating_point():
        raise VerilensError(f"head_masked_o_proj: z must be floating point, got {z.dtype}")
    N = weight.shape[0]
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != N):
        raise VerilensError(f"head_masked_o_proj: bias must be [{N}], got shape {tuple(bias.shape)}")
    dev = z.device

    s = s_host = None
    if scale is not None:
        s, s_host = _param(scale, dev, "scale")
        if s.dim() == 1:
            if s.shape[0] != H:
                raise VerilensError(f"head_masked_o_proj: a per-head scale needs {H} values, got {s.shape[0]}")
        elif s.dim() == 3:
            if tuple(s.shape) != (B, P, H):
                raise VerilensError(f"head_masked_o_proj: a per-position scale must be [{B}, {P}, {H}], "
                                    f"got {tuple(s.shape)}")
            if where is not None:
                raise VerilensError("head_masked_o_proj: `where` goes with a per-head scale [n_heads]; "
                                    "fold it into a per-position scale instead")
        else:
            raise VerilensError(f"head_masked_o_proj: scale must be [n_heads] or [batch, pos, n_heads], "
                                f"got shape {tuple(s.shape)}")
    if where is not None:
        if s is None:
            raise VerilensError("head_masked_o_proj: `where` needs a scale")
        w = torch.as_tensor(where, device=dev)
        if w.dim() == 1 and B == 1:
            w = w[None]
        if tuple(w.shape) != (B, P):
            raise VerilensError(f"head_masked_o_proj: where must be [batch, pos] = [{B}, {P}], got {tuple(w.shape)}")
        where = w.bool()
    fl = None
    if fill is not None:
        if s is None:
            raise VerilensError("head_masked_o_proj: `fill` needs a scale (which heads to replace)")
        fl, _ = _param(fill, dev, "fill")
        if fl.dim() == 0:
            fl = fl.expand(H, dh)
        if tuple(fl.shape) not in ((H, dh), (H * dh,)):
            raise VerilensError(f"head_masked_o_proj: fill must be a float or [n_heads, d_head] = [{H}, {dh}], "
                                f"got shape {tuple(fl.shape)}")
        fl = fl.reshape(H, dh).contiguous()

    pos = None
    if result_positions is not None:
        if isinstance(result_positions, str):
            if result_positions != "all":
                raise VerilensError(f"head_masked_o_proj: result_positions must be 'all' or a [batch, k] "
                                    f"tensor, got {result_positions!r}")
            pos = torch.arange(P, device=dev).expand(B, P)
        else:
            pos = torch.as_tensor(result_positions, device=dev)
            if pos.dim() == 1 and B == 1:
                pos = pos[None]
            if pos.dim() != 2 or pos.shape[0] != B or pos.dtype.is_floating_point:
                raise VerilensError(f"head_masked_o_proj: result_positions must be an integer [batch, k] tensor "
                                    f"with batch = {B}, got {pos.dtype} {tuple(pos.shape)}")
            pos = pos.long()
            if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= P):
                raise VerilensError(f"head_masked_o_proj: result_positions must lie in 0..{P - 1}, "
                                    f"got {int(pos.min())}..{int(pos.max())}")
    return _Args(z, weight, bias, B, P, H, dh, N, squeeze, s, s_host, where, fl, pos)


# ----------------------------------------------------------------------------------
# Reference
def _edit_z_ref(z4: torch.Tensor, scale, fill, where) -> torch.Tensor:
    """z' in z's dtype: exactly z where scale == 1, exactly fill (or 0) where scale == 0."""
    if scale is None:
        return z4
    if scale.dim() == 1 and bool(((scale == 0) | (scale == 1)).all()):
        # 0/1 per head: the hooked runtime's own hand edit (clone, set the heads, select positions)
        drop = (scale == 0).nonzero().flatten()
        if drop.numel() == 0:
            return z4
        new = z4.clone()
        new[:, :, drop] = 0 if fill is None else fill[drop].to(z4.dtype)
        return new if where is None else torch.where(where[..., None, None], new, z4)
    if where is not None:
        scale = torch.where(where[..., None], scale, torch.ones((), dtype=torch.float32, device=z4.device))
    zf = z4.float()
    s = scale[..., None]  # [H, 1] or [B, P, H, 1]
    f = fill if fill is not None else torch.zeros((), dtype=torch.float32, device=z4.device)
    mixed = s * zf + (1.0 - s) * f
    v = torch.where(s == 1.0, zf, torch.where(s == 0.0, f.expand_as(zf), mixed))
    return v.to(z4.dtype)


def head_masked_o_proj_ref(z, weight, bias=None, *, n_heads=None, scale=None, fill=None, where=None,
                           result_positions=None) -> HeadMaskedOProjOutput:
    """Torch reference: edit z as a hand edit of attn.hook_z would, then F.linear; the
    per-head outputs exactly as the hooked runtime computes hook_result (einsum)."""
    a = _check(z, weight, bias, n_heads, scale, fill, where, result_positions)
    z4 = _edit_z_ref(a.z.view(a.B, a.P, a.H, a.dh), a.scale, a.fill, a.where)
    out = F.linear(z4.reshape(a.B, a.P, a.H * a.dh), a.weight, a.bias)
    result = None
    if a.positions is not None:
        zs = z4[torch.arange(a.B, device=z4.device)[:, None], a.positions]
        result = torch.einsum("bkhd,mhd->bkhm", zs, a.weight.view(a.N, a.H, a.dh))
    if a.squeeze:
        out = out[0]
        result = result[0] if result is not None else None
    return HeadMaskedOProjOutput(out, result)


# ----------------------------------------------------------------------------------
# Kernel


def _gpu_configs():
    import triton

    cfgs = [
        (128, 256, 8, 3), (256, 128, 8, 3), (128, 128, 8, 3), (128, 128, 4, 4), (128, 64, 4, 4),
        (64, 128, 4, 4), (64, 64, 4, 4), (32, 64, 4, 4), (16, 64, 4, 4), (16, 128, 4, 3),
        (16, 32, 2, 4),  # decoding (a few rows): more programs over d_model
    ]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for m, n, w, s in cfgs]


def _prune(configs, named_args, **kwargs):
    """Fewer compiles: row tiles no taller than the (bucketed) row count, and no thin
    row tiles when there are many rows."""
    mb = named_args["M_BUCKET"] if "M_BUCKET" in named_args else kwargs.get("M_BUCKET", 1 << 20)
    keep = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, mb) and (mb < 512 or c.kwargs["BLOCK_M"] >= 64)]
    return keep or configs


@lru_cache(maxsize=2)
def _build(autotune: bool):
    import triton
    import triton.language as tl

    @triton.jit
    def _head_masked_o_proj_kernel(
        Z, W, OUT, S, FILL, HEADS, BIAS, CONST, POS, RES,
        M, N, P, KP, R, n_active, stride_zm, stride_wn, stride_wk, stride_sm, M_BUCKET,
        H: tl.constexpr, HP: tl.constexpr, DH: tl.constexpr, MODE: tl.constexpr, HAS_FILL: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_CONST: tl.constexpr, ALL_HEADS: tl.constexpr,
        CAPTURE: tl.constexpr, CAP_EDIT: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        STEPS: tl.constexpr = (DH + BLOCK_K - 1) // BLOCK_K  # K steps per head
        EVEN_K: tl.constexpr = DH % BLOCK_K == 0
        pid = tl.program_id(0)
        n_tm = tl.cdiv(M, BLOCK_M)
        n_tn = tl.cdiv(N, BLOCK_N)
        n_main = n_tm * n_tn
        rk = tl.arange(0, BLOCK_K)
        if pid < n_main:
            # ---- o_proj tile (grouped ordering for L2 reuse of W) ----
            width = GROUP_M * n_tn
            group = pid // width
            first_m = group * GROUP_M
            gsize = tl.minimum(n_tm - first_m, GROUP_M)
            pid_m = first_m + (pid % width) % gsize
            pid_n = (pid % width) // gsize
            rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M  # clamped rows: no masks in the loop
            rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
            rm64 = rm.to(tl.int64)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            if ALL_HEADS:
                n_steps = H * STEPS
            else:
                n_steps = n_active * STEPS
                # the kept heads, held in registers: the K loop's addresses then depend on
                # the loop index only through arithmetic, so it pipelines like a plain GEMM
                slots = tl.arange(0, HP)
                kept = tl.load(HEADS + slots, mask=slots < n_active, other=0)
            for i in range(0, n_steps):
                if ALL_HEADS:
                    h = i // STEPS
                else:
                    h = tl.sum(tl.where(slots == i // STEPS, kept, 0), axis=0)
                d = (i % STEPS) * BLOCK_K + rk
                kcol = h * DH + d
                a_ptr = Z + rm64[:, None] * stride_zm + kcol[None, :]
                w_ptr = W + rn[None, :].to(tl.int64) * stride_wn + kcol[:, None] * stride_wk
                if EVEN_K:
                    a = tl.load(a_ptr)
                    w = tl.load(w_ptr)
                else:
                    km = d < DH
                    a = tl.load(a_ptr, mask=km[None, :], other=0.0)
                    w = tl.load(w_ptr, mask=km[:, None], other=0.0)
                if MODE == 1:  # edit the z tile in registers: s*z + (1-s)*fill
                    s = tl.load(S + rm64 * stride_sm + h)[:, None]
                    af = a.to(tl.float32)
                    if HAS_FILL:
                        if EVEN_K:
                            f = tl.load(FILL + h * DH + d)[None, :]
                        else:
                            f = tl.load(FILL + h * DH + d, mask=d < DH, other=0.0)[None, :]
                        v = tl.where(s == 1.0, af, tl.where(s == 0.0, f, s * af + (1.0 - s) * f))
                    else:
                        v = tl.where(s == 0.0, 0.0, s * af)
                    a = v.to(Z.dtype.element_ty)
                if UPCAST:
                    a = a.to(tl.float32)
                    w = w.to(tl.float32)
                acc = tl.dot(a, w, acc, input_precision=PREC)
            rn_o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            rm_o = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            nmask = rn_o < N
            if HAS_BIAS:
                acc += tl.load(BIAS + rn_o, mask=nmask, other=0.0).to(tl.float32)[None, :]
            if HAS_CONST:
                acc += tl.load(CONST + rn_o, mask=nmask, other=0.0)[None, :]
            o_ptr = OUT + rm_o.to(tl.int64)[:, None] * N + rn_o[None, :]
            tl.store(o_ptr, acc.to(OUT.dtype.element_ty), mask=(rm_o < M)[:, None] & nmask[None, :])
        else:
            if CAPTURE:
                # ---- per-head outputs at the selected rows: (row tile, d_model tile, head) ----
                # (own names: Triton merges same-named variables of the two branches)
                c_c = pid - n_main
                n_tr_c = tl.cdiv(R, BLOCK_R)
                h_c = c_c // (n_tr_c * n_tn)
                rem_c = c_c % (n_tr_c * n_tn)
                pid_r_c = rem_c // n_tn
                pid_n_c = rem_c % n_tn
                rr_c = pid_r_c * BLOCK_R + tl.arange(0, BLOCK_R)
                rmask_c = rr_c < R
                rrc_c = tl.minimum(rr_c, R - 1)
                b_c = rrc_c // KP
                p_c = tl.load(POS + rrc_c)
                m64_c = b_c.to(tl.int64) * P + p_c
                rn_c = (pid_n_c * BLOCK_N + tl.arange(0, BLOCK_N)) % N
                acc_c = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
                if CAP_EDIT:
                    s_c = tl.load(S + m64_c * stride_sm + h_c)[:, None]
                for j_c in range(0, STEPS):
                    d_c = j_c * BLOCK_K + rk
                    kcol_c = h_c * DH + d_c
                    km_c = d_c < DH
                    a_c = tl.load(Z + m64_c[:, None] * stride_zm + kcol_c[None, :], mask=km_c[None, :], other=0.0)
                    w_c = tl.load(W + rn_c[None, :].to(tl.int64) * stride_wn + kcol_c[:, None] * stride_wk,
                              mask=km_c[:, None], other=0.0)
                    if CAP_EDIT:
                        af_c = a_c.to(tl.float32)
                        if HAS_FILL:
                            f_c = tl.load(FILL + h_c * DH + d_c, mask=km_c, other=0.0)[None, :]
                            v_c = tl.where(s_c == 1.0, af_c, tl.where(s_c == 0.0, f_c, s_c * af_c + (1.0 - s_c) * f_c))
                        else:
                            v_c = tl.where(s_c == 0.0, 0.0, s_c * af_c)
                        a_c = v_c.to(Z.dtype.element_ty)
                    if UPCAST:
                        a_c = a_c.to(tl.float32)
                        w_c = w_c.to(tl.float32)
                    acc_c = tl.dot(a_c, w_c, acc_c, input_precision=PREC)
                rn_o_c = pid_n_c * BLOCK_N + tl.arange(0, BLOCK_N)
                r_ptr_c = RES + (rr_c.to(tl.int64)[:, None] * H + h_c) * N + rn_o_c[None, :]
                tl.store(r_ptr_c, acc_c.to(RES.dtype.element_ty), mask=rmask_c[:, None] & (rn_o_c < N)[None, :])

    if not autotune:
        return _head_masked_o_proj_kernel
    return triton.autotune(
        configs=_gpu_configs(),
        key=["M_BUCKET", "N", "H", "DH", "MODE", "ALL_HEADS", "CAPTURE", "PREC"],
        prune_configs_by={"early_config_prune": _prune},
    )(_head_masked_o_proj_kernel)


def _block_k(dh: int, elem_size: int, interp: bool) -> int:
    cap = 64 if (interp or elem_size <= 2) else 32
    p2 = dh & -dh  # largest power of two dividing d_head: no K masks when >= 16
    if p2 >= 16:
        return min(p2, cap)
    return min(cap, max(16, 1 << (dh - 1).bit_length()))


INTERPRETER_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "GROUP_M": 4}


def head_masked_o_proj_triton(z, weight, bias=None, *, n_heads=None, scale=None, fill=None, where=None,
                              result_positions=None, out=None, result=None, config=None) -> HeadMaskedOProjOutput:
    """The Triton kernel; same arguments and results as `head_masked_o_proj_ref`.

    `out` / `result`: optional preallocated outputs (contiguous, z's dtype). `config`:
    {"BLOCK_M", "BLOCK_N", "GROUP_M"[, "num_warps", "num_stages"]} fixes the tile;
    otherwise the GPU autotunes (per M bucket) and the interpreter uses INTERPRETER_CONFIG."""
    import triton

    a = _check(z, weight, bias, n_heads, scale, fill, where, result_positions)
    interp = interpreting()
    if not interp and not a.z.is_cuda:
        raise VerilensError("head_masked_o_proj_triton needs CUDA tensors (or TRITON_INTERPRET=1 for tests)")
    B, P, H, dh, N = a.B, a.P, a.H, a.dh, a.N
    M, dev, dtype = B * P, a.z.device, a.z.dtype
    z2 = a.z.reshape(M, H * dh)
    if z2.stride(1) != 1:
        z2 = z2.contiguous()
    W = a.weight
    if out is None:
        out = torch.empty((B, P, N), dtype=dtype, device=dev)
    elif out.shape not in ((B, P, N), (M, N)) or not out.is_contiguous() or out.dtype != dtype:
        raise VerilensError(f"head_masked_o_proj_triton: out must be a contiguous {dtype} tensor [{B}, {P}, {N}]")

    dummy_f = torch.empty(1, dtype=torch.float32, device=dev)
    mode, all_heads, n_active, const = 0, True, H, None
    heads_t = torch.empty(1, dtype=torch.int32, device=dev)
    s_t, stride_sm = dummy_f, 0
    scale_ = a.scale
    if a.where is not None:  # a per-head scale at some positions: per position in the kernel
        scale_ = torch.where(a.where[..., None], a.scale, torch.ones((), dtype=torch.float32, device=dev))
    if scale_ is not None and scale_.dim() == 1:
        s_t = scale_.contiguous()
        # the path depends on the [H] values: read on the host (a device sync only if the
        # caller passed them as a CUDA tensor)
        s_host = a.scale_host if a.scale_host is not None else scale_.cpu()
        if bool(((s_host == 0) | (s_host == 1)).all()):
            keep = tuple(h for h in range(H) if s_host[h] == 1)
            drop = tuple(h for h in range(H) if s_host[h] == 0)
            if drop:  # the K loop walks the kept heads only
                all_heads, n_active = False, len(keep)
                heads_t = _index_on(dev, keep or (0,))
                if a.fill is not None:  # dropped heads contribute fill_h @ W_O[h]: a constant row
                    d_t = _index_on(dev, drop)
                    fd = a.fill.index_select(0, d_t).to(dtype).float()  # as a hand edit would store it in z
                    Wd = W.view(N, H, dh).index_select(1, d_t).float()
                    const = torch.einsum("hd,nhd->n", fd, Wd).contiguous()
        else:
            mode = 1
    elif scale_ is not None:
        mode, s_t, stride_sm = 1, scale_.reshape(M, H).contiguous(), H

    capture = a.positions is not None
    if capture:
        KP = a.positions.shape[1]
        R = B * KP
        pos_t = a.positions.reshape(-1).contiguous()
        if result is None:
            result = torch.empty((B, KP, H, N), dtype=dtype, device=dev)
        elif result.shape != (B, KP, H, N) or not result.is_contiguous() or result.dtype != dtype:
            raise VerilensError(f"head_masked_o_proj_triton: result must be a contiguous {dtype} tensor "
                                f"[{B}, {KP}, {H}, {N}]")
        block_r = 16 if R <= 16 else (32 if R <= 32 else 64)
    else:
        KP, R, pos_t, block_r = 1, 0, torch.empty(1, dtype=torch.long, device=dev), 16
    res_t = result if capture else out

    if dtype == torch.float32:
        prec = fp32_dot_precision(interp)
    else:
        prec = "ieee" if interp else "tf32"  # ignored for 16-bit operands
    upcast = interp and dtype == torch.bfloat16
    fill_t = a.fill if a.fill is not None else dummy_f
    bias_t = a.bias if a.bias is not None else dummy_f
    const_t = const if const is not None else dummy_f
    block_k = _block_k(dh, z2.element_size(), interp)
    m_bucket = 1 << max(4, (M - 1).bit_length())

    args = (z2, W, out, s_t, fill_t, heads_t, bias_t, const_t, pos_t, res_t,
            M, N, P, KP, R, n_active, z2.stride(0), W.stride(0), W.stride(1), stride_sm, m_bucket)
    kw = dict(H=H, HP=max(2, 1 << (H - 1).bit_length()), DH=dh, MODE=mode, HAS_FILL=a.fill is not None,
              HAS_BIAS=a.bias is not None,
              HAS_CONST=const is not None, ALL_HEADS=all_heads, CAPTURE=capture,
              CAP_EDIT=a.scale is not None, UPCAST=upcast, PREC=prec, BLOCK_K=block_k, BLOCK_R=block_r)

    def grid(meta):
        bn = meta["BLOCK_N"]
        n_main = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, bn)
        return (n_main + (triton.cdiv(R, block_r) * triton.cdiv(N, bn) * H if capture else 0),)

    if config is None and (interp or not torch.cuda.is_available()):
        config = INTERPRETER_CONFIG
    if M == 0:
        pass
    elif config is not None:
        cfg = dict(config)
        extra = {k: cfg.pop(k) for k in ("num_warps", "num_stages") if k in cfg}
        if interp:
            extra = {}
        _build(False)[grid(cfg)](*args, **kw, **cfg, **extra)
    else:
        _build(True)[grid](*args, **kw)
    out = out.view(B, P, N)
    if a.squeeze:
        return HeadMaskedOProjOutput(out[0], result[0] if capture else None)
    return HeadMaskedOProjOutput(out, result if capture else None)
