"""Masked GLU activation: SiLU(gate) * up with a per-neuron scale, optionally capturing
selected neurons at selected positions, in one pass over gate and up: the registered op
`torch.ops.verilens.masked_glu`.

    act[m, f]  = SiLU(gate[m, f]) * up[m, f]                 (rounded as torch does it)
    act'[m, f] = s[f] * act + (1 - s[f]) * fill[f]   where where[m] (else act)
    captured[b, k, j] = act'[b, pos[b, k], neurons[j]]

`gate`, `up`: [batch, pos, d_mlp] (the gate_proj / up_proj outputs); `scale` [d_mlp]
(1 keeps a neuron, 0 replaces it by `fill`, other values interpolate); `fill` a float or
[d_mlp] (default 0); `where` [batch, pos] bool limits the edit to some positions (e.g.
the last one, or the rows whose trigger fired). Where s is exactly 1 or 0, act' is
exactly act or fill, so the result equals editing mlp.hook_post by hand. `act'` is what
down_proj consumes (mlp.hook_post); `captured` is taken after the edit, like a cache hook
registered after the intervention.

The op: CPU (and float64 anywhere) runs the torch reference, CUDA the Triton kernel;
`register_fake` for torch.compile; autograd with respect to gate, up, the scale and the
fill (the interpolation's derivative, also at s = 1). The path depends on shapes and
dtypes only, so the CUDA path never synchronises with the host.

The down_proj matmul is not fused: the op returns act' for torch's (cuBLAS) matmul. A
prologue-fused GEMM would save one write and one read of act' (~2*M*d_mlp*2 bytes) but
recompute SiLU once per d_model tile (d_model/BLOCK_N times) and give up cuBLAS;
benchmarks/bench_kernels.py measures the elementwise part against torch on the GPU.

SiLU is computed in fp32 and rounded to the input dtype before the product, like
`F.silu(gate) * up` (the Hugging Face MLP), so the numbers match the plain model up to
the last ulp of exp. Under TRITON_INTERPRET=1 one fixed config replaces autotuning
(which needs a GPU driver).
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from verilens.errors import VerilensError
from verilens.kernels import _launch as L

OP = "masked_glu"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class MaskedGLUOutput(NamedTuple):
    act: torch.Tensor  # [batch, pos, d_mlp]
    captured: torch.Tensor | None  # [batch, k, n] or None


class _Args(NamedTuple):
    gate: torch.Tensor  # [B, P, F]
    up: torch.Tensor
    squeeze: bool
    scale: torch.Tensor | None  # [F]; float32 (float64 for float64 gate/up)
    fill: torch.Tensor | None  # [F], the scale's dtype
    where: torch.Tensor | None  # bool [B, P]
    positions: torch.Tensor | None  # long [B, K] (capture), None = all positions
    neurons: torch.Tensor | None  # long [n] (capture), None = all neurons
    capture: bool


def canonical(gate, up, scale=None, fill=None, where=None, capture_positions=None, capture_neurons=None) -> _Args:
    """Check the arguments (VerilensError naming the argument and the expected shape,
    before anything runs) and bring them to the op's canonical form."""
    if not isinstance(gate, torch.Tensor) or not isinstance(up, torch.Tensor):
        raise VerilensError(f"{OP}: gate and up must be tensors")
    if gate.shape != up.shape or gate.dtype != up.dtype or gate.device != up.device:
        raise VerilensError(f"{OP}: gate {list(gate.shape)} {gate.dtype} {gate.device} and up {list(up.shape)} "
                            f"{up.dtype} {up.device} must share shape, dtype and device")
    if not gate.is_floating_point():
        raise VerilensError(f"{OP}: gate and up must be floating point (float32, float16, bfloat16 or float64), "
                            f"got {gate.dtype}")
    squeeze = False
    if gate.dim() == 2:
        gate, up, squeeze = gate[None], up[None], True
    if gate.dim() != 3:
        raise VerilensError(f"{OP}: gate and up must be [batch, pos, d_mlp], got {list(gate.shape)}")
    B, P, Fd = gate.shape
    dev = gate.device
    pdt = torch.promote_types(gate.dtype, torch.float32)  # the scale's and fill's dtype
    s = None
    if scale is not None:
        s = L.as_tensor_arg(OP, "scale", scale, dev, pdt)
        if s.dim() != 1 or s.shape[0] != Fd:
            raise VerilensError(f"{OP}: scale must be [d_mlp] = [{Fd}], got {list(s.shape)}")
        L.check_finite(OP, "scale", s)
    fl = None
    if fill is not None:
        if s is None:
            raise VerilensError(f"{OP}: `fill` needs a scale (which neurons to replace)")
        fl = L.as_tensor_arg(OP, "fill", fill, dev, pdt) if isinstance(fill, torch.Tensor) \
            else torch.full((Fd,), float(fill), dtype=pdt, device=dev)
        if fl.dim() == 0:
            fl = fl.expand(Fd)
        if fl.dim() != 1 or fl.shape[0] != Fd:
            raise VerilensError(f"{OP}: fill must be a float or [d_mlp] = [{Fd}], got {list(fl.shape)}")
        fl = fl.contiguous()
        L.check_finite(OP, "fill", fl)
    w = None
    if where is not None:
        w = L.where_arg(OP, where, s, dev, B, P)
    capture = capture_positions is not None or capture_neurons is not None
    pos = None
    if capture_positions is not None and not (isinstance(capture_positions, str) and capture_positions == "all"):
        if isinstance(capture_positions, str):
            raise VerilensError(f"{OP}: capture_positions must be 'all' or a [batch, k] tensor, "
                                f"got {capture_positions!r}")
        pos = L.positions_arg(OP, "capture_positions", capture_positions, dev, B, P)
    idx = None
    if capture_neurons is not None and not (isinstance(capture_neurons, str) and capture_neurons == "all"):
        if isinstance(capture_neurons, str):
            raise VerilensError(f"{OP}: capture_neurons must be 'all' or a list of indices, got {capture_neurons!r}")
        idx = L.index_arg(OP, "capture_neurons", capture_neurons, dev)
        if idx.dim() != 1:
            raise VerilensError(f"{OP}: capture_neurons must be a 1-D list of neuron indices, got {list(idx.shape)}")
        L.check_index_range(OP, "capture_neurons", idx, Fd)
        idx = idx.contiguous()
    return _Args(gate, up, squeeze, s, fl, w, pos, idx, capture)


def _output(a: _Args, act, captured) -> MaskedGLUOutput:
    if not a.capture:
        captured = None
    if a.squeeze:
        return MaskedGLUOutput(act[0], None if captured is None else captured[0])
    return MaskedGLUOutput(act, captured)


# ----------------------------------------------------------------------------------
# Reference
def _edit_ref(act, scale, fill, where):
    """act' in act's dtype: exactly act where scale == 1 or outside `where`, exactly
    fill (or 0) rounded to act's dtype where scale == 0, the interpolation between."""
    if scale is None:
        return act
    af = act.to(torch.promote_types(act.dtype, torch.float32))
    s = scale.to(af.dtype)
    f = fill.to(af.dtype) if fill is not None else torch.zeros((), dtype=af.dtype, device=act.device)
    new = torch.where(s == 1.0, af, torch.where(s == 0.0, f.expand_as(af), s * af + (1.0 - s) * f))
    if where is not None:
        new = torch.where(where[..., None], new, af)
    return new.to(act.dtype)


def _capture(act, positions, neurons):
    if positions is None and neurons is None:
        return act.clone()  # its own tensor (an op's outputs never alias each other)
    c = act if positions is None else act[torch.arange(act.shape[0], device=act.device)[:, None], positions]
    return c if neurons is None else c[..., neurons]


def _ref(gate, up, scale, fill, where, positions, neurons, capture):
    """(act, captured or None) in canonical form: `F.silu(gate) * up` (the Hugging Face
    MLP's own ops), the edit a hand edit of mlp.hook_post would make, then the capture."""
    act = _edit_ref(F.silu(gate) * up, scale, fill, where)
    return act, (_capture(act, positions, neurons) if capture else None)


def masked_glu_ref(gate, up, *, scale=None, fill=None, where=None, capture_positions=None,
                   capture_neurons=None) -> MaskedGLUOutput:
    """Torch reference (the model's own ops, then the hand edit, then the capture)."""
    a = canonical(gate, up, scale, fill, where, capture_positions, capture_neurons)
    return _output(a, *_ref(a.gate, a.up, a.scale, a.fill, a.where, a.positions, a.neurons, a.capture))


# ----------------------------------------------------------------------------------
# Kernel
def _gpu_configs():
    import triton

    cfgs = [(1, 1024, 4), (1, 2048, 8), (2, 1024, 4), (4, 1024, 8), (4, 512, 4), (8, 256, 4)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_F": f}, num_warps=w) for m, f, w in cfgs]


@lru_cache(maxsize=2)
def _build(autotune: bool):
    import triton
    import triton.language as tl

    @triton.jit
    def _masked_glu_kernel(
        G, U, ACT, S, FILL, WHERE, POS, IDX, CAP,
        M, Fd, P, KP, R, NC, stride_gm, stride_um, M_BUCKET,
        HAS_SCALE: tl.constexpr, HAS_FILL: tl.constexpr, HAS_WHERE: tl.constexpr,
        CAPTURE: tl.constexpr, CAP_POS: tl.constexpr, CAP_IDX: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_f = tl.program_id(1)
        n_tm = tl.cdiv(M, BLOCK_M)
        j = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
        if pid_m < n_tm:
            # ---- act' for a [BLOCK_M, BLOCK_F] tile ----
            rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            mmask = rm < M
            row = rm.to(tl.int64)
            col = j
            mask = mmask[:, None] & (j < Fd)[None, :]
            out_ptr = ACT + row[:, None] * Fd + j[None, :]
            out_mask = mask
        else:
            # ---- capture: act' at the selected (row, neuron) pairs ----
            rr = (pid_m - n_tm) * BLOCK_M + tl.arange(0, BLOCK_M)
            rmask = rr < R
            rrc = tl.minimum(rr, R - 1)
            if CAP_POS:
                b = rrc // KP
                # indices are not checked on the GPU (no sync): clamp them into range
                p = tl.minimum(tl.maximum(tl.load(POS + rrc), 0), P - 1)
                row = b.to(tl.int64) * P + p
            else:
                row = rrc.to(tl.int64)
            jm = j < NC
            if CAP_IDX:
                col = tl.minimum(tl.maximum(tl.load(IDX + tl.minimum(j, NC - 1)), 0), Fd - 1).to(tl.int32)
            else:
                col = j
            mask = rmask[:, None] & jm[None, :]
            out_ptr = CAP + rr.to(tl.int64)[:, None] * NC + j[None, :]
            out_mask = mask
        g = tl.load(G + row[:, None] * stride_gm + col[None, :], mask=mask, other=0.0)
        u = tl.load(U + row[:, None] * stride_um + col[None, :], mask=mask, other=0.0)
        gf = g.to(tl.float32)
        silu = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)  # rounded like F.silu in the input dtype
        act = silu.to(tl.float32) * u.to(tl.float32)  # exact in fp32; one rounding below, like silu*up
        if HAS_SCALE:
            act = act.to(g.dtype).to(tl.float32)  # the activation the edit sees
            s = tl.load(S + col, mask=col < Fd, other=1.0)[None, :]
            if HAS_FILL:
                f = tl.load(FILL + col, mask=col < Fd, other=0.0)[None, :]
                new = tl.where(s == 1.0, act, tl.where(s == 0.0, f, s * act + (1.0 - s) * f))
            else:
                new = tl.where(s == 0.0, 0.0, s * act)
            if HAS_WHERE:
                wr = tl.load(WHERE + row, mask=row < M, other=0)
                act = tl.where((wr != 0)[:, None], new, act)
            else:
                act = new
        tl.store(out_ptr, act.to(ACT.dtype.element_ty), mask=out_mask)

    if not autotune:
        return _masked_glu_kernel
    return triton.autotune(configs=_gpu_configs(), key=["M_BUCKET", "Fd", "HAS_SCALE", "CAPTURE"])(_masked_glu_kernel)


INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_F": 128}


def _triton(gate, up, scale, fill, where, positions, neurons, capture, out=None, captured=None, config=None):
    """(act, captured or None) by the Triton kernel, in canonical form; one launch, no sync."""
    import triton

    L.require_kernel_device(OP, gate)
    if gate.dtype not in KERNEL_DTYPES:
        raise VerilensError(f"{OP}: the Triton kernel takes float32, float16 or bfloat16, got {gate.dtype}")
    B, P, Fd = gate.shape
    M, dev, dtype = B * P, gate.device, gate.dtype
    g2, u2 = gate.reshape(M, Fd), up.reshape(M, Fd)
    if g2.stride(1) != 1:
        g2 = g2.contiguous()
    if u2.stride(1) != 1:
        u2 = u2.contiguous()
    if out is None:
        out = torch.empty((B, P, Fd), dtype=dtype, device=dev)
    elif out.shape not in ((B, P, Fd), (M, Fd)) or not out.is_contiguous() or out.dtype != dtype:
        raise VerilensError(f"{OP}: out must be a contiguous {dtype} tensor [{B}, {P}, {Fd}]")
    dummy_f = torch.empty(1, dtype=torch.float32, device=dev)
    dummy_l = torch.zeros(1, dtype=torch.long, device=dev)
    w_t = where.reshape(M).to(torch.int8) if where is not None else torch.zeros(1, dtype=torch.int8, device=dev)
    KP, R, NC = 1, 0, 1
    pos_t, idx_t, cap_t = dummy_l, dummy_l, out
    if capture:
        if positions is not None:
            KP = positions.shape[1]
            R = B * KP
            pos_t = positions.reshape(-1).contiguous()
        else:
            KP, R = P, M
        NC = neurons.numel() if neurons is not None else Fd
        if neurons is not None:
            idx_t = neurons
        shape = (B, KP, NC)
        if captured is None:
            captured = torch.empty(shape, dtype=dtype, device=dev)
        elif captured.shape != shape or not captured.is_contiguous() or captured.dtype != dtype:
            raise VerilensError(f"{OP}: captured must be a contiguous {dtype} tensor {list(shape)}")
        cap_t = captured
    args = (g2, u2, out, scale if scale is not None else dummy_f, fill if fill is not None else dummy_f, w_t,
            pos_t, idx_t, cap_t, M, Fd, P, KP, R, NC, g2.stride(0), u2.stride(0), L.next_pow2(M))
    kw = dict(HAS_SCALE=scale is not None, HAS_FILL=fill is not None, HAS_WHERE=where is not None,
              CAPTURE=capture and R > 0 and NC > 0, CAP_POS=positions is not None, CAP_IDX=neurons is not None)

    def grid(meta):
        bm, bf = meta["BLOCK_M"], meta["BLOCK_F"]
        rows = triton.cdiv(M, bm) + (triton.cdiv(R, bm) if kw["CAPTURE"] else 0)
        return (rows, triton.cdiv(max(Fd, NC), bf))

    if M > 0:
        L.run(_build, grid, args, kw, config, INTERPRETER_CONFIG)
    return out.view(B, P, Fd), (captured if capture else None)


def masked_glu_triton(gate, up, *, scale=None, fill=None, where=None, capture_positions=None,
                      capture_neurons=None, out=None, captured=None, config=None) -> MaskedGLUOutput:
    """The Triton kernel itself (for tests and benchmarks; forward only: gradients come
    through the registered op); same arguments and results as `masked_glu_ref`.

    `out` / `captured`: optional preallocated outputs (contiguous, the input dtype).
    `config`: {"BLOCK_M", "BLOCK_F"[, "num_warps"]} fixes the tile; otherwise the GPU
    autotunes and the interpreter uses INTERPRETER_CONFIG."""
    a = canonical(gate, up, scale, fill, where, capture_positions, capture_neurons)
    return _output(a, *_triton(a.gate, a.up, a.scale, a.fill, a.where, a.positions, a.neurons, a.capture,
                               out, captured, config))


# ----------------------------------------------------------------------------------
# The registered op: torch.ops.verilens.masked_glu (canonical arguments; `captured` is
# [batch, 0, 0] when nothing is captured: an op returns tensors)
@torch.library.custom_op("verilens::masked_glu", mutates_args=())
def masked_glu_op(gate: torch.Tensor, up: torch.Tensor, scale: Optional[torch.Tensor], fill: Optional[torch.Tensor],
                  where: Optional[torch.Tensor], positions: Optional[torch.Tensor], neurons: Optional[torch.Tensor],
                  capture: bool) -> tuple[torch.Tensor, torch.Tensor]:
    act, captured = _ref(gate, up, scale, fill, where, positions, neurons, capture)
    return act, gate.new_empty((gate.shape[0], 0, 0)) if captured is None else captured


@masked_glu_op.register_kernel("cuda")
def _cuda(gate, up, scale, fill, where, positions, neurons, capture):
    run = _ref if gate.dtype not in KERNEL_DTYPES else _triton  # float64: the reference (by dtype)
    act, captured = run(gate, up, scale, fill, where, positions, neurons, capture)
    return act, gate.new_empty((gate.shape[0], 0, 0)) if captured is None else captured


@masked_glu_op.register_fake
def _fake(gate, up, scale, fill, where, positions, neurons, capture):
    B, P, Fd = gate.shape
    if not capture:
        return gate.new_empty((B, P, Fd)), gate.new_empty((B, 0, 0))
    K = P if positions is None else positions.shape[1]
    n = Fd if neurons is None else neurons.shape[0]
    return gate.new_empty((B, P, Fd)), gate.new_empty((B, K, n))


def _setup_context(ctx, inputs, output):
    gate, up, scale, fill, where, positions, neurons, capture = inputs
    ctx.save_for_backward(gate, up, scale, fill, where, positions, neurons)
    ctx.capture = capture


def _backward(ctx, g_act, g_cap):
    """Gradients of act' and captured with respect to gate, up, scale and fill, from the
    interpolation act' = s act + (1 - s) fill where `where` (smooth in s, also at 0 or 1)."""
    gate, up, scale, fill, where, positions, neurons = ctx.saved_tensors
    need = ctx.needs_input_grad
    B, P, Fd = gate.shape
    g = g_act
    if ctx.capture and g_cap is not None and g_cap.numel():
        full = torch.zeros_like(g_act)
        b = torch.arange(B, device=gate.device)[:, None]
        p = positions if positions is not None else torch.arange(P, device=gate.device).expand(B, P)
        n = neurons if neurons is not None else torch.arange(Fd, device=gate.device)
        full = full.index_put((b[:, :, None], p[:, :, None], n[None, None, :]), g_cap, accumulate=True)
        g = g_act + full
    ct = torch.promote_types(gate.dtype, torch.float32)
    gf, gt, ut = g.to(ct), gate.to(ct), up.to(ct)
    sig = torch.sigmoid(gt)
    silu = gt * sig
    g_s = g_f = None
    if scale is None:
        g_raw = gf
    else:
        m = torch.ones((B, P, 1), dtype=ct, device=gate.device) if where is None else where[..., None].to(ct)
        s = scale.to(ct)
        g_raw = gf * (1.0 + m * (s - 1.0))  # s where the edit applies, 1 elsewhere
        if need[2]:
            f = fill.to(ct) if fill is not None else torch.zeros((), dtype=ct, device=gate.device)
            g_s = (gf * m * (silu * ut - f)).sum((0, 1)).to(scale.dtype)
        if need[3] and fill is not None:
            g_f = (gf * m * (1.0 - s)).sum((0, 1)).to(fill.dtype)
    g_gate = (g_raw * ut * sig * (1.0 + gt * (1.0 - sig))).to(gate.dtype) if need[0] else None
    g_up = (g_raw * silu).to(up.dtype) if need[1] else None
    return g_gate, g_up, g_s, g_f, None, None, None, None


torch.library.register_autograd("verilens::masked_glu", _backward, setup_context=_setup_context)


def masked_glu(gate, up, *, scale=None, fill=None, where=None, capture_positions=None,
               capture_neurons=None) -> MaskedGLUOutput:
    """The registered op in the caller's terms (see verilens.ops.masked_glu)."""
    a = canonical(gate, up, scale, fill, where, capture_positions, capture_neurons)
    act, captured = torch.ops.verilens.masked_glu(a.gate, a.up, a.scale, a.fill, a.where, a.positions, a.neurons,
                                                  a.capture)
    return _output(a, act, captured)
