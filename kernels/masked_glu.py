"""Masked GLU activation: SiLU(gate) * up with a per-neuron scale, optionally capturing
selected neurons at selected positions, in one pass over gate and up.

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

The down_proj matmul is not fused: the op returns act' for torch's (cuBLAS) matmul. A
prologue-fused GEMM would save one write and one read of act' (~2*M*d_mlp*2 bytes) but
recompute SiLU once per d_model tile (d_model/BLOCK_N times) and give up cuBLAS;
benchmarks/bench_kernels.py measures the elementwise part against torch on the GPU.

SiLU is computed in fp32 and rounded to the input dtype before the product, like
`F.silu(gate) * up` (the Hugging Face MLP), so the numbers match the plain model up to
the last ulp of exp. `masked_glu_ref` is the torch reference (exactly the model's ops on
CPU). Triton is imported on first use; under TRITON_INTERPRET=1 one fixed config
replaces autotuning (which needs a GPU driver).
"""
from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F

from verilens.errors import VerilensError
from verilens.kernels._env import interpreting


class MaskedGLUOutput(NamedTuple):
    act: torch.Tensor  # [batch, pos, d_mlp]
    captured: torch.Tensor | None  # [batch, k, n] or None


class _Args(NamedTuple):
    gate: torch.Tensor  # [B, P, F]
    up: torch.Tensor
    B: int
    P: int
    F: int
    squeeze: bool
    scale: torch.Tensor | None  # float32 [F]
    fill: torch.Tensor | None  # float32 [F]
    where: torch.Tensor | None  # bool [B, P]
    positions: torch.Tensor | None  # long [B, K] (capture), None = all positions
    neurons: torch.Tensor | None  # long [n] (capture), None = all neurons
    capture: bool


_ON_DEVICE: OrderedDict = OrderedDict()  # small host parameters' device copies, by value


def _f32(x, dev, what):
    """float32 on `dev`. Host values (numbers, lists, CPU tensors) are checked on the host
    and their device copies cached by value, so calling again with the same scale/fill
    costs no transfer and no device sync; CUDA tensors are checked on the device."""
    if isinstance(x, torch.Tensor) and x.device.type != "cpu":
        t = x.to(device=dev, dtype=torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise VerilensError(f"masked_glu: {what} contains NaN or inf")
        return t
    try:
        host = torch.as_tensor(x, dtype=torch.float32).contiguous()
    except (TypeError, ValueError, RuntimeError) as e:
        raise VerilensError(f"masked_glu: {what} must be numbers, got {type(x).__name__}") from e
    if not bool(torch.isfinite(host).all()):
        raise VerilensError(f"masked_glu: {what} contains NaN or inf")
    return _on_device(host, dev)


def _on_device(host: torch.Tensor, dev) -> torch.Tensor:
    if dev.type == "cpu":
        return host
    key = (str(dev), host.dtype, tuple(host.shape), host.numpy().tobytes())
    t = _ON_DEVICE.get(key)
    if t is None:
        t = _ON_DEVICE[key] = host.to(dev)
        if len(_ON_DEVICE) > 64:
            _ON_DEVICE.popitem(last=False)
    else:
        _ON_DEVICE.move_to_end(key)
    return t


def _check(gate, up, scale, fill, where, capture_positions, capture_neurons) -> _Args:
    if not isinstance(gate, torch.Tensor) or not isinstance(up, torch.Tensor):
        raise VerilensError("masked_glu: gate and up must be tensors")
    if gate.shape != up.shape or gate.dtype != up.dtype or gate.device != up.device:
        raise VerilensError(f"masked_glu: gate {tuple(gate.shape)} {gate.dtype} and up {tuple(up.shape)} {up.dtype} "
                            "must share shape, dtype and device")
    if not gate.is_floating_point():
        raise VerilensError(f"masked_glu: gate and up must be floating point, got {gate.dtype}")
    squeeze = False
    if gate.dim() == 2:
        gate, up, squeeze = gate[None], up[None], True
    if gate.dim() != 3:
        raise VerilensError(f"masked_glu: gate and up must be [batch, pos, d_mlp], got {tuple(gate.shape)}")
    B, P, Fd = gate.shape
    dev = gate.device
    s = None
    if scale is not None:
        s = _f32(scale, dev, "scale")
        if s.dim() != 1 or s.shape[0] != Fd:
            raise VerilensError(f"masked_glu: scale must be [d_mlp] = [{Fd}], got shape {tuple(s.shape)}")
    fl = None
    if fill is not None:
        if s is None:
            raise VerilensError("masked_glu: `fill` needs a scale (which neurons to replace)")
        fl = _f32(fill, dev, "fill")
        if fl.dim() == 0:
            fl = fl.expand(Fd)
        if fl.dim() != 1 or fl.shape[0] != Fd:
            raise VerilensError(f"masked_glu: fill must be a float or [d_mlp] = [{Fd}], got shape {tuple(fl.shape)}")
        fl = fl.contiguous()
    w = None
    if where is not None:
        if s is None:
            raise VerilensError("masked_glu: `where` needs a scale")
        w = torch.as_tensor(where, device=dev)
        if w.dim() == 1 and B == 1:
            w = w[None]
        if tuple(w.shape) != (B, P):
            raise VerilensError(f"masked_glu: where must be [batch, pos] = [{B}, {P}], got {tuple(w.shape)}")
        w = w.bool()
    capture = capture_positions is not None or capture_neurons is not None
    pos = None
    if capture_positions is not None and not (isinstance(capture_positions, str) and capture_positions == "all"):
        if isinstance(capture_positions, str):
            raise VerilensError(f"masked_glu: capture_positions must be 'all' or a [batch, k] tensor, "
                                f"got {capture_positions!r}")
        pos = torch.as_tensor(capture_positions, device=dev)
        if pos.dim() == 1 and B == 1:
            pos = pos[None]
        if pos.dim() != 2 or pos.shape[0] != B or pos.dtype.is_floating_point:
            raise VerilensError(f"masked_glu: capture_positions must be an integer [batch, k] tensor with "
                                f"batch = {B}, got {pos.dtype} {tuple(pos.shape)}")
        pos = pos.long()
        if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= P):
            raise VerilensError(f"masked_glu: capture_positions must lie in 0..{P - 1}, "
                                f"got {int(pos.min())}..{int(pos.max())}")
    idx = None
    if capture_neurons is not None and not (isinstance(capture_neurons, str) and capture_neurons == "all"):
        if isinstance(capture_neurons, str):
            raise VerilensError(f"masked_glu: capture_neurons must be 'all' or a list of indices, "
                                f"got {capture_neurons!r}")
        on_host = not (isinstance(capture_neurons, torch.Tensor) and capture_neurons.device.type != "cpu")
        idx = torch.as_tensor(capture_neurons)
        if idx.numel() == 0:  # [] is float to torch
            idx = idx.long()
        if idx.dim() != 1 or idx.dtype.is_floating_point:
            raise VerilensError(f"masked_glu: capture_neurons must be a 1-D list of neuron indices, "
                                f"got {idx.dtype} {tuple(idx.shape)}")
        idx = idx.long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= Fd):
            raise VerilensError(f"masked_glu: capture_neurons must lie in 0..{Fd - 1}, "
                                f"got {int(idx.min())}..{int(idx.max())}")
        idx = _on_device(idx.contiguous(), dev) if on_host else idx.to(dev)
    return _Args(gate, up, B, P, Fd, squeeze, s, fl, w, pos, idx, capture)


# ----------------------------------------------------------------------------------
# Reference
def masked_glu_ref(gate, up, *, scale=None, fill=None, where=None, capture_positions=None,
                   capture_neurons=None) -> MaskedGLUOutput:
    """Torch reference: `F.silu(gate) * up` (the Hugging Face MLP's own ops), then the
    edit a hand edit of mlp.hook_post would make, then the capture (after the edit)."""
    a = _check(gate, up, scale, fill, where, capture_positions, capture_neurons)
    act = F.silu(a.gate) * a.up
    binary = a.scale is not None and bool(((a.scale == 0) | (a.scale == 1)).all())
    if binary:  # 0/1 per neuron: the hooked runtime's own hand edit (clone, set, select positions)
        drop = (a.scale == 0).nonzero().flatten()
        if drop.numel():
            new = act.clone()
            new[..., drop] = 0 if a.fill is None else a.fill[drop].to(act.dtype)
            act = new if a.where is None else torch.where(a.where[..., None], new, act)
    elif a.scale is not None:
        af = act.float()
        s = a.scale
        f = a.fill if a.fill is not None else torch.zeros((), dtype=torch.float32, device=act.device)
        new = torch.where(s == 1.0, af, torch.where(s == 0.0, f.expand_as(af), s * af + (1.0 - s) * f))
        if a.where is not None:
            new = torch.where(a.where[..., None], new, af)
        act = new.to(act.dtype)
    captured = None
    if a.capture:
        c = act if a.positions is None else act[torch.arange(a.B, device=act.device)[:, None], a.positions]
        captured = c if a.neurons is None else c[..., a.neurons]
    if a.squeeze:
        act = act[0]
        captured = captured[0] if captured is not None else None
    return MaskedGLUOutput(act, captured)


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
                p = tl.load(POS + rrc)
                row = b.to(tl.int64) * P + p
            else:
                row = rrc.to(tl.int64)
            jm = j < NC
            if CAP_IDX:
                col = tl.load(IDX + tl.minimum(j, NC - 1)).to(tl.int32)
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


def masked_glu_triton(gate, up, *, scale=None, fill=None, where=None, capture_positions=None,
                      capture_neurons=None, out=None, captured=None, config=None) -> MaskedGLUOutput:
    """The Triton kernel; same arguments and results as `masked_glu_ref`.

    `out` / `captured`: optional preallocated outputs (contiguous, the input dtype).
    `config`: {"BLOCK_M", "BLOCK_F"[, "num_warps"]} fixes the tile; otherwise the GPU
    autotunes and the interpreter uses INTERPRETER_CONFIG."""
    import triton

    a = _check(gate, up, scale, fill, where, capture_positions, capture_neurons)
    interp = interpreting()
    if not interp and not a.gate.is_cuda:
        raise VerilensError("masked_glu_triton needs CUDA tensors (or TRITON_INTERPRET=1 for tests)")
    B, P, Fd = a.B, a.P, a.F
    M, dev, dtype = B * P, a.gate.device, a.gate.dtype
    g2, u2 = a.gate.reshape(M, Fd), a.up.reshape(M, Fd)
    if g2.stride(1) != 1:
        g2 = g2.contiguous()
    if u2.stride(1) != 1:
        u2 = u2.contiguous()
    if out is None:
        out = torch.empty((B, P, Fd), dtype=dtype, device=dev)
    elif out.shape not in ((B, P, Fd), (M, Fd)) or not out.is_contiguous() or out.dtype != dtype:
        raise VerilensError(f"masked_glu_triton: out must be a contiguous {dtype} tensor [{B}, {P}, {Fd}]")
    dummy_f = torch.empty(1, dtype=torch.float32, device=dev)
    dummy_l = torch.zeros(1, dtype=torch.long, device=dev)
    s_t = a.scale.contiguous() if a.scale is not None else dummy_f
    f_t = a.fill if a.fill is not None else dummy_f
    w_t = a.where.reshape(M).to(torch.int8) if a.where is not None else torch.zeros(1, dtype=torch.int8, device=dev)

    KP, R, NC = 1, 0, 1
    pos_t, idx_t, cap_t = dummy_l, dummy_l, out
    if a.capture:
        if a.positions is not None:
            KP = a.positions.shape[1]
            R = B * KP
            pos_t = a.positions.reshape(-1).contiguous()
        else:
            KP, R = P, M
        NC = a.neurons.numel() if a.neurons is not None else Fd
        if a.neurons is not None:
            idx_t = a.neurons.contiguous()
        shape = (B, KP, NC)
        if captured is None:
            captured = torch.empty(shape, dtype=dtype, device=dev)
        elif captured.shape != shape or not captured.is_contiguous() or captured.dtype != dtype:
            raise VerilensError(f"masked_glu_triton: captured must be a contiguous {dtype} tensor {list(shape)}")
        cap_t = captured
    args = (g2, u2, out, s_t, f_t, w_t, pos_t, idx_t, cap_t, M, Fd, P, KP, R, NC, g2.stride(0), u2.stride(0),
            1 << max(0, (M - 1).bit_length()))
    kw = dict(HAS_SCALE=a.scale is not None, HAS_FILL=a.fill is not None, HAS_WHERE=a.where is not None,
              CAPTURE=a.capture and R > 0 and NC > 0, CAP_POS=a.positions is not None, CAP_IDX=a.neurons is not None)

    def grid(meta):
        bm, bf = meta["BLOCK_M"], meta["BLOCK_F"]
        rows = triton.cdiv(M, bm) + (triton.cdiv(R, bm) if kw["CAPTURE"] else 0)
        return (rows, triton.cdiv(max(Fd, NC), bf))

    if config is None and (interp or not torch.cuda.is_available()):
        config = INTERPRETER_CONFIG
    if M > 0:
        if config is not None:
            cfg = dict(config)
            extra = {k: cfg.pop(k) for k in ("num_warps", "num_stages") if k in cfg}
            if interp:
                extra = {}
            _build(False)[grid(cfg)](*args, **kw, **cfg, **extra)
        else:
            _build(True)[grid](*args, **kw)
    out = out.view(B, P, Fd)
    if a.squeeze:
        return MaskedGLUOutput(out[0], captured[0] if a.capture else None)
    return MaskedGLUOutput(out, captured if a.capture else None)
