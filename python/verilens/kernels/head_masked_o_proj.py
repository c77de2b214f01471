"""Head-masked attention output projection, optionally emitting per-head outputs:
the registered op `torch.ops.verilens.head_masked_o_proj`.

    z'[b,p,h,:]  = s[b,p,h] * z[b,p,h,:] + (1 - s[b,p,h]) * fill[h,:]     (the ablation)
    out[b,p,:]   = sum_h z'[b,p,h,:] @ W_O[h] (+ bias)                     (o_proj)
    result[b,k,h,:] = z'[b, pos[b,k], h, :] @ W_O[h]                       (attn.hook_result)

`z` is the o_proj input ([batch, pos, n_heads*d_head] or [batch, pos, n_heads, d_head]),
`weight` the nn.Linear weight [d_model, n_heads*d_head]. `scale` is per head [H] or per
position [batch, pos, H] (1 keeps a head, 0 ablates it, other values interpolate towards
`fill`); `where` [batch, pos] limits a per-head scale to some positions; `fill` (default
0) is what an ablated head's z becomes, a float or [H, d_head] (mean ablation). Where s is
exactly 1 or 0, z' is exactly z or fill, so the result equals editing hook_z by hand.

The op: CPU (and float64 anywhere) runs the torch reference, CUDA the Triton kernel;
`register_fake` gives shapes to torch.compile; autograd gives gradients with respect to
z, the weight, the bias, the scale and the fill (the derivative of the interpolation,
also at s = 1: d out / d s_h = (z_h - fill_h) @ W_O[h], what attribution patching needs).
The op's path depends on shapes and dtypes only, never on the scale's values, so the CUDA
path never synchronises with the host.

One Triton launch does everything: the grid holds the o_proj tiles (a grouped GEMM over
the concatenated heads) followed by the capture tiles (gathered rows x d_model tiles x
heads), which re-read only the selected rows of z. The edit is one multiply (and, with
a fill, one fused multiply-add) per loaded z element in registers before the dot; a
per-head scale is a per-position scale with row stride 0. How close the GEMM comes to
cuBLAS is for benchmarks/bench_kernels.py to measure on a GPU (autotuned tiles per
power-of-two bucket of rows).

Under TRITON_INTERPRET=1 the kernel runs on CPU tensors (tests): bf16 operands are upcast
to fp32 before `tl.dot` (the interpreter's bf16 dot is wrong) and one fixed config
replaces autotuning (which needs a GPU driver).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from verilens.errors import VerilensError
from verilens.kernels import _launch as L

OP = "head_masked_o_proj"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class HeadMaskedOProjOutput(NamedTuple):
    out: torch.Tensor  # [batch, pos, d_model]
    result: torch.Tensor | None  # [batch, k, n_heads, d_model] or None


# ----------------------------------------------------------------------------------
# Arguments: checked once, in the caller's terms, then in the op's canonical form
@dataclass
class _Args:
    z: torch.Tensor  # [B, P, H*dh]
    weight: torch.Tensor  # [N, H*dh]
    bias: torch.Tensor | None  # [N]
    H: int
    squeeze: bool  # the input was 2-D [pos, H*dh]
    scale: torch.Tensor | None  # [H] or [B, P, H] (a `where` is folded in); float32 (float64 for float64 z)
    fill: torch.Tensor | None  # [H, dh], the scale's dtype
    positions: torch.Tensor | None  # long [B, K]


def canonical(z, weight, bias=None, n_heads=None, scale=None, fill=None, where=None,
              result_positions=None) -> _Args:
    """Check the arguments (VerilensError naming the argument and the expected shape,
    before anything runs) and bring them to the op's canonical form."""
    if not isinstance(z, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise VerilensError(f"{OP}: z and weight must be tensors")
    squeeze = False
    if z.dim() == 4:
        B, P, H, dh = z.shape
        if n_heads is not None and n_heads != H:
            raise VerilensError(f"{OP}: z has {H} heads but n_heads={n_heads}")
        z = z.reshape(B, P, H * dh)
    elif z.dim() in (2, 3):
        if z.dim() == 2:
            z, squeeze = z[None], True
        if n_heads is None:
            raise VerilensError(f"{OP}: z is [batch, pos, n_heads*d_head]; pass n_heads "
                                "(or give z as [batch, pos, n_heads, d_head])")
        B, P, HD = z.shape
        H = int(n_heads)
        if H <= 0 or HD % H:
            raise VerilensError(f"{OP}: z's width {HD} is not a multiple of n_heads={n_heads}")
        dh = HD // H
    else:
        raise VerilensError(f"{OP}: z must be [batch, pos, n_heads*d_head] or [batch, pos, n_heads, d_head], "
                            f"got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise VerilensError(f"{OP}: z must be floating point (float32, float16, bfloat16 or float64), got {z.dtype}")
    if weight.dim() != 2 or weight.shape[1] != H * dh:
        raise VerilensError(f"{OP}: weight must be the o_proj weight [d_model, {H * dh}], "
                            f"got shape {tuple(weight.shape)}")
    if weight.dtype != z.dtype or weight.device != z.device:
        raise VerilensError(f"{OP}: z ({z.dtype}, {z.device}) and weight ({weight.dtype}, {weight.device}) "
                            "must share dtype and device")
    N, dev = weight.shape[0], z.device
    pdt = torch.promote_types(z.dtype, torch.float32)  # the scale's and fill's dtype
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dim() != 1 or bias.shape[0] != N:
            raise VerilensError(f"{OP}: bias must be [{N}], got {_shape(bias)}")
        if bias.dtype != z.dtype or bias.device != dev:
            raise VerilensError(f"{OP}: bias ({bias.dtype}, {bias.device}) must share z's dtype and device "
                                f"({z.dtype}, {dev})")

    s = None
    if scale is not None:
        s = L.as_tensor_arg(OP, "scale", scale, dev, pdt)
        if s.dim() == 1:
            if s.shape[0] != H:
                raise VerilensError(f"{OP}: a per-head scale must be [n_heads] = [{H}], got [{s.shape[0]}]")
        elif s.dim() == 3:
            if tuple(s.shape) != (B, P, H):
                raise VerilensError(f"{OP}: a per-position scale must be [batch, pos, n_heads] = [{B}, {P}, {H}], "
                                    f"got {list(s.shape)}")
            if where is not None:
                raise VerilensError(f"{OP}: `where` goes with a per-head scale [n_heads]; "
                                    "fold it into a per-position scale instead")
        else:
            raise VerilensError(f"{OP}: scale must be [n_heads] = [{H}] or [batch, pos, n_heads] = [{B}, {P}, {H}], "
                                f"got {list(s.shape)}")
        L.check_finite(OP, "scale", s)
    if where is not None:
        w = L.where_arg(OP, where, s, dev, B, P)
        # a per-head scale at some positions is a per-position scale (on the device: no sync)
        s = torch.where(w[..., None], s, torch.ones((), dtype=pdt, device=dev))
    fl = None
    if fill is not None:
        if s is None:
            raise VerilensError(f"{OP}: `fill` needs a scale (which heads to replace)")
        fl = L.as_tensor_arg(OP, "fill", fill, dev, pdt) if isinstance(fill, torch.Tensor) \
            else torch.full((H, dh), float(fill), dtype=pdt, device=dev)
        if fl.dim() == 0:
            fl = fl.expand(H, dh)
        if tuple(fl.shape) not in ((H, dh), (H * dh,)):
            raise VerilensError(f"{OP}: fill must be a float or [n_heads, d_head] = [{H}, {dh}], "
                                f"got {list(fl.shape)}")
        fl = fl.reshape(H, dh).contiguous()
        L.check_finite(OP, "fill", fl)

    pos = None
    if result_positions is not None:
        if isinstance(result_positions, str):
            if result_positions != "all":
                raise VerilensError(f"{OP}: result_positions must be 'all' or a [batch, k] tensor, "
                                    f"got {result_positions!r}")
            pos = torch.arange(P, device=dev).expand(B, P)
        else:
            pos = L.positions_arg(OP, "result_positions", result_positions, dev, B, P)
    return _Args(z, weight, bias, H, squeeze, s, fl, pos)


def _shape(x):
    return list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _output(a: _Args, out, result) -> HeadMaskedOProjOutput:
    if a.positions is None:
        result = None
    if a.squeeze:
        return HeadMaskedOProjOutput(out[0], None if result is None else result[0])
    return HeadMaskedOProjOutput(out, result)


# ----------------------------------------------------------------------------------
# Reference
def _edit_z_ref(z4: torch.Tensor, scale, fill) -> torch.Tensor:
    """z' in z's dtype: exactly z where scale == 1, exactly fill (or 0) rounded to z's
    dtype where scale == 0 (what a hand edit of hook_z stores), the interpolation between."""
    if scale is None:
        return z4
    zf = z4.to(torch.promote_types(z4.dtype, torch.float32))
    s = scale[..., None].to(zf.dtype)  # [H, 1] or [B, P, H, 1]
    f = fill.to(zf.dtype) if fill is not None else torch.zeros((), dtype=zf.dtype, device=z4.device)
    mixed = s * zf + (1.0 - s) * f
    return torch.where(s == 1.0, zf, torch.where(s == 0.0, f.expand_as(zf), mixed)).to(z4.dtype)


def _ref(z, weight, bias, scale, fill, positions, H):
    """(out, result or None) in canonical form, with torch ops."""
    B, P, HD = z.shape
    z4 = _edit_z_ref(z.view(B, P, H, HD // H), scale, fill)
    out = F.linear(z4.reshape(B, P, HD), weight, bias)
    result = None
    if positions is not None:
        zs = z4[torch.arange(B, device=z.device)[:, None], positions]
        result = torch.einsum("bkhd,mhd->bkhm", zs, weight.view(weight.shape[0], H, HD // H)).contiguous()
    return out, result


def head_masked_o_proj_ref(z, weight, bias=None, *, n_heads=None, scale=None, fill=None, where=None,
                           result_positions=None) -> HeadMaskedOProjOutput:
    """Torch reference: edit z as a hand edit of attn.hook_z would, then F.linear; the
    per-head outputs exactly as the hooked runtime computes hook_result (einsum)."""
    a = canonical(z, weight, bias, n_heads, scale, fill, where, result_positions)
    return _output(a, *_ref(a.z, a.weight, a.bias, a.scale, a.fill, a.positions, a.H))


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
        Z, W, OUT, S, FILL, BIAS, POS, RES,
        M, N, P, KP, R, stride_zm, stride_wn, stride_wk, stride_sm, M_BUCKET,
        H: tl.constexpr, DH: tl.constexpr, EDIT: tl.constexpr, HAS_FILL: tl.constexpr,
        HAS_BIAS: tl.constexpr, CAPTURE: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
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
            for i in range(0, H * STEPS):
                h = i // STEPS
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
                if EDIT:  # edit the z tile in registers: s*z + (1-s)*fill (per head: row stride 0)
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
                # positions are not checked on the GPU (no sync): clamp them into the sequence
                p_c = tl.minimum(tl.maximum(tl.load(POS + rrc_c), 0), P - 1)
                m64_c = b_c.to(tl.int64) * P + p_c
                rn_c = (pid_n_c * BLOCK_N + tl.arange(0, BLOCK_N)) % N
                acc_c = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
                if EDIT:
                    s_c = tl.load(S + m64_c * stride_sm + h_c)[:, None]
                for j_c in range(0, STEPS):
                    d_c = j_c * BLOCK_K + rk
                    kcol_c = h_c * DH + d_c
                    km_c = d_c < DH
                    a_c = tl.load(Z + m64_c[:, None] * stride_zm + kcol_c[None, :], mask=km_c[None, :], other=0.0)
                    w_c = tl.load(W + rn_c[None, :].to(tl.int64) * stride_wn + kcol_c[:, None] * stride_wk,
                                  mask=km_c[:, None], other=0.0)
                    if EDIT:
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
        key=["M_BUCKET", "N", "H", "DH", "EDIT", "CAPTURE", "PREC"],
        prune_configs_by={"early_config_prune": _prune},
    )(_head_masked_o_proj_kernel)


def _block_k(dh: int, elem_size: int, interp: bool) -> int:
    cap = 64 if (interp or elem_size <= 2) else 32
    p2 = dh & -dh  # largest power of two dividing d_head: no K masks when >= 16
    if p2 >= 16:
        return min(p2, cap)
    return min(cap, max(16, L.next_pow2(dh)))


INTERPRETER_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "GROUP_M": 4}


def _triton(z, weight, bias, scale, fill, positions, H, out=None, result=None, config=None):
    """(out, result or None) by the Triton kernel, in canonical form; one launch, no sync."""
    import triton

    L.require_kernel_device(OP, z)
    if z.dtype not in KERNEL_DTYPES:
        raise VerilensError(f"{OP}: the Triton kernel takes float32, float16 or bfloat16, got {z.dtype}")
    interp = L.interpreting()
    B, P, HD = z.shape
    dh, N = HD // H, weight.shape[0]
    M, dev, dtype = B * P, z.device, z.dtype
    z2 = z.reshape(M, HD)
    if z2.stride(1) != 1:
        z2 = z2.contiguous()
    if out is None:
        out = torch.empty((B, P, N), dtype=dtype, device=dev)
    elif out.shape not in ((B, P, N), (M, N)) or not out.is_contiguous() or out.dtype != dtype:
        raise VerilensError(f"{OP}: out must be a contiguous {dtype} tensor [{B}, {P}, {N}]")
    dummy_f = torch.empty(1, dtype=torch.float32, device=dev)
    s_t = scale.contiguous() if scale is not None else dummy_f
    stride_sm = H if (scale is not None and scale.dim() == 3) else 0

    capture = positions is not None
    if capture:
        KP = positions.shape[1]
        R = B * KP
        pos_t = positions.reshape(-1).contiguous()
        if result is None:
            result = torch.empty((B, KP, H, N), dtype=dtype, device=dev)
        elif result.shape != (B, KP, H, N) or not result.is_contiguous() or result.dtype != dtype:
            raise VerilensError(f"{OP}: result must be a contiguous {dtype} tensor [{B}, {KP}, {H}, {N}]")
        block_r = 16 if R <= 16 else (32 if R <= 32 else 64)
    else:
        KP, R, pos_t, block_r = 1, 0, torch.empty(1, dtype=torch.long, device=dev), 16
    prec = L.fp32_dot_precision(interp) if dtype == torch.float32 else ("ieee" if interp else "tf32")
    args = (z2, weight, out, s_t, fill if fill is not None else dummy_f, bias if bias is not None else dummy_f,
            pos_t, result if capture else out,
            M, N, P, KP, R, z2.stride(0), weight.stride(0), weight.stride(1), stride_sm,
            1 << max(4, (M - 1).bit_length()))
    kw = dict(H=H, DH=dh, EDIT=scale is not None, HAS_FILL=fill is not None, HAS_BIAS=bias is not None,
              CAPTURE=capture, UPCAST=interp and dtype == torch.bfloat16, PREC=prec,
              BLOCK_K=_block_k(dh, z2.element_size(), interp), BLOCK_R=block_r)

    def grid(meta):
        bn = meta["BLOCK_N"]
        n_main = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, bn)
        return (n_main + (triton.cdiv(R, block_r) * triton.cdiv(N, bn) * H if capture else 0),)

    if M > 0:
        L.run(_build, grid, args, kw, config, INTERPRETER_CONFIG)
    return out.view(B, P, N), (result if capture else None)


def head_masked_o_proj_triton(z, weight, bias=None, *, n_heads=None, scale=None, fill=None, where=None,
                              result_positions=None, out=None, result=None, config=None) -> HeadMaskedOProjOutput:
    """The Triton kernel itself (for tests and benchmarks; forward only: gradients come
    through the registered op); same arguments and results as `head_masked_o_proj_ref`.

    `out` / `result`: optional preallocated outputs (contiguous, z's dtype). `config`:
    {"BLOCK_M", "BLOCK_N", "GROUP_M"[, "num_warps", "num_stages"]} fixes the tile;
    otherwise the GPU autotunes (per M bucket) and the interpreter uses INTERPRETER_CONFIG."""
    a = canonical(z, weight, bias, n_heads, scale, fill, where, result_positions)
    return _output(a, *_triton(a.z, a.weight, a.bias, a.scale, a.fill, a.positions, a.H, out, result, config))


# ----------------------------------------------------------------------------------
# The registered op: torch.ops.verilens.head_masked_o_proj (canonical arguments; `result`
# is [batch, 0, n_heads, d_model] when no positions are asked for: an op returns tensors)
@torch.library.custom_op("verilens::head_masked_o_proj", mutates_args=())
def head_masked_o_proj_op(z: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          scale: Optional[torch.Tensor], fill: Optional[torch.Tensor],
                          positions: Optional[torch.Tensor], n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    out, result = _ref(z, weight, bias, scale, fill, positions, n_heads)
    return out, _no_result(z, weight, n_heads) if result is None else result


@head_masked_o_proj_op.register_kernel("cuda")
def _cuda(z, weight, bias, scale, fill, positions, n_heads):
    if z.dtype not in KERNEL_DTYPES:  # float64: the reference (chosen by dtype, not by values)
        out, result = _ref(z, weight, bias, scale, fill, positions, n_heads)
    else:
        out, result = _triton(z, weight, bias, scale, fill, positions, n_heads)
    return out, _no_result(z, weight, n_heads) if result is None else result


def _no_result(z, weight, n_heads):
    return z.new_empty((z.shape[0], 0, n_heads, weight.shape[0]))


@head_masked_o_proj_op.register_fake
def _fake(z, weight, bias, scale, fill, positions, n_heads):
    B, P, _ = z.shape
    K = 0 if positions is None else positions.shape[1]
    return z.new_empty((B, P, weight.shape[0])), z.new_empty((B, K, n_heads, weight.shape[0]))


def _setup_context(ctx, inputs, output):
    z, weight, bias, scale, fill, positions, n_heads = inputs
    ctx.save_for_backward(z, weight, scale, fill, positions)
    ctx.n_heads, ctx.has_bias = n_heads, bias is not None


def _backward(ctx, g_out, g_res):
    """Gradients of out and result with respect to z, weight, bias, scale and fill, from
    the interpolation z' = s z + (1 - s) fill (smooth in s, also at s = 0 or 1)."""
    z, weight, scale, fill, positions = ctx.saved_tensors
    H = ctx.n_heads
    B, P, HD = z.shape
    dh, N = HD // H, weight.shape[0]
    need = ctx.needs_input_grad
    z4 = z.view(B, P, H, dh)
    zp = _edit_z_ref(z4, scale, fill)  # z' as the forward used it
    W3 = weight.view(N, H, dh)
    g_zp = (g_out.reshape(B * P, N) @ weight).view(B, P, H, dh)
    has_res = positions is not None and positions.shape[1] > 0 and g_res is not None
    if has_res:
        rows = torch.arange(B, device=z.device)[:, None].expand_as(positions)
        g_zp = g_zp.index_put((rows, positions), torch.einsum("bkhn,nhd->bkhd", g_res, W3), accumulate=True)
    g_z = g_w = g_b = g_s = g_f = None
    s = None if scale is None else (scale.view(1, 1, H, 1) if scale.dim() == 1 else scale[..., None])
    if need[0]:
        g_z = (g_zp if s is None else g_zp * s.to(g_zp.dtype)).reshape(B, P, HD).to(z.dtype)
    if need[1]:
        g_w = g_out.reshape(B * P, N).T @ zp.reshape(B * P, HD)
        if has_res:
            zs = zp[torch.arange(B, device=z.device)[:, None], positions]
            g_w = g_w + torch.einsum("bkhn,bkhd->nhd", g_res, zs).reshape(N, HD)
    if need[2] and ctx.has_bias:
        g_b = g_out.sum((0, 1))
    if scale is not None and (need[3] or need[4]):
        gf = g_zp.float() if g_zp.dtype != torch.float64 else g_zp
        f = fill.to(gf.dtype) if fill is not None else torch.zeros((), dtype=gf.dtype, device=z.device)
        if need[3]:
            g_s = (gf * (z4.to(gf.dtype) - f)).sum(-1)  # [B, P, H]
            g_s = (g_s.sum((0, 1)) if scale.dim() == 1 else g_s).to(scale.dtype)
        if need[4] and fill is not None:
            g_f = (gf * (1.0 - s.to(gf.dtype))).sum((0, 1)).to(fill.dtype)
    return g_z, g_w, g_b, g_s, g_f, None, None


torch.library.register_autograd("verilens::head_masked_o_proj", _backward, setup_context=_setup_context)


def head_masked_o_proj(z, weight, bias=None, *, n_heads=None, scale=None, fill=None, where=None,
                       result_positions=None) -> HeadMaskedOProjOutput:
    """The registered op in the caller's terms (see verilens.ops.head_masked_o_proj)."""
    a = canonical(z, weight, bias, n_heads, scale, fill, where, result_positions)
    out, result = torch.ops.verilens.head_masked_o_proj(a.z, a.weight, a.bias, a.scale, a.fill, a.positions, a.H)
    return _output(a, out, result)
