"""Batched OV x MLP-input kernels for the channel scores (PAPER.md section 5), all heads
at once, never forming a d_model x d_model matrix.

    paper_terms(W_V, W_O, G, U)[c, i] = SiLU(g_i . ov_c) * (u_i . ov_c),
        ov_c[m] = sum_k W_V^c[m, k] W_O^c[k, m]   (the diagonal of head c's OV matrix)
    composition_numerators(W_O, P, M)[c, i] = sqrt(x P_c x^T),  x = m_i (W_O^c)^T
        (= ||m_i (W_V^c W_O^c)^T|| with P_c = (W_V^c)^T W_V^c)

Two registered ops, `torch.ops.verilens.channel_paper_terms` and
`torch.ops.verilens.composition_numerators` (CPU: the torch references, the second in
chunks of heads so no [L*H, n, d_head] tensor is formed at once; CUDA: the Triton
kernels; `register_fake` for both; weights only, so no autograd).

Heads are flattened to c = layer * H + head. W_V is given per KV head [L, KV, d, dh] and
shared by the H / KV query heads of its group inside the kernel (no repeat in memory);
P [L, KV, dh, dh] likewise. One program handles one head and a block of neurons: it
streams the head's weights over d_model in BLOCK_D chunks. Tests compare the kernels with
the references under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import torch

from verilens.errors import VerilensError
from verilens.kernels import _launch as Lh

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def paper_terms_ref(W_V, W_O, G, U):
    """[L*H, n] SiLU(g_i . ov_c) * (u_i . ov_c) in float32 (float64 for float64 input)."""
    L, H = W_O.shape[:2]
    ct = torch.promote_types(W_O.dtype, torch.float32)
    W_V = W_V.repeat_interleave(H // W_V.shape[1], dim=1) if W_V.shape[1] != H else W_V
    ov = torch.einsum("lhmk,lhkm->lhm", W_V.to(ct), W_O.to(ct)).flatten(0, 1)
    return torch.nn.functional.silu(ov @ G.to(ct).T) * (ov @ U.to(ct).T)


def composition_numerators_ref(W_O, P, M, chunk_heads: int = 64):
    """[L*H, n] sqrt(x P_c x^T), x = m_i (W_O^c)^T, in chunks of `chunk_heads` heads."""
    L, H = W_O.shape[:2]
    ct = torch.promote_types(W_O.dtype, torch.float32)
    P = P.to(ct).repeat_interleave(H // P.shape[1], dim=1).flatten(0, 1)
    B, M = W_O.flatten(0, 1), M.to(ct)
    out = []
    for s in range(0, B.shape[0], chunk_heads):
        X = torch.einsum("nm,ckm->cnk", M, B[s:s + chunk_heads].to(ct))  # M B^T per head: [c, n, dh]
        out.append(((X @ P[s:s + chunk_heads]) * X).sum(-1).clamp(min=0).sqrt())
    return torch.cat(out) if out else M.new_empty((0, M.shape[0]))


def _check(op, W_O, kv_name, kv, rows):
    """W_O [L, H, d_head, d_model]; `kv` (W_V [L, KV, d_model, d_head] or P [L, KV, d_head,
    d_head]) with H a multiple of KV; `rows` {name: [n, d_model]}, one n."""
    if not isinstance(W_O, torch.Tensor) or W_O.dim() != 4:
        raise VerilensError(f"{op}: W_O must be [layers, heads, d_head, d_model], got {_shape(W_O)}")
    L, H, dh, d = W_O.shape
    want = (L, None, d, dh) if kv_name == "W_V" else (L, None, dh, dh)
    if not isinstance(kv, torch.Tensor) or kv.dim() != 4 or any(w is not None and w != k
                                                               for w, k in zip(want, kv.shape)):
        spell = f"[{L}, kv_heads, {d}, {dh}]" if kv_name == "W_V" else f"[{L}, kv_heads, {dh}, {dh}]"
        raise VerilensError(f"{op}: {kv_name} must be {spell}, got {_shape(kv)}")
    if kv.shape[1] == 0 or H % kv.shape[1]:
        raise VerilensError(f"{op}: {H} query heads are not a multiple of {kv.shape[1]} kv heads in {kv_name}")
    n = None
    for name, t in rows.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != d or (n is not None and t.shape[0] != n):
            raise VerilensError(f"{op}: {name} must be [n_neurons, {d}]" + (f" with n = {n}" if n is not None else "")
                                + f", got {_shape(t)}")
        n = t.shape[0]
    tensors = {"W_O": W_O, kv_name: kv, **rows}
    devs = {str(t.device) for t in tensors.values()}
    if len(devs) != 1:
        raise VerilensError(f"{op}: all inputs must be on one device, got "
                            + ", ".join(f"{k} on {t.device}" for k, t in tensors.items()))
    for k, t in tensors.items():
        if not t.is_floating_point():
            raise VerilensError(f"{op}: {k} must be floating point, got {t.dtype}")


def _shape(x):
    return list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


_KERNELS = {}


def _kernels():
    if _KERNELS:
        return _KERNELS
    import triton
    import triton.language as tl

    @triton.jit
    def paper_kernel(wv, wo, g, u, out, n, H, GROUP, D, DH,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
        c = tl.program_id(0)
        nb = tl.program_id(1)
        layer = c // H
        kv = layer * (H // GROUP) + (c % H) // GROUP
        rn = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        gacc = tl.zeros([BLOCK_N], dtype=tl.float32)
        uacc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            rd = d0 + tl.arange(0, BLOCK_D)
            md = rd < D
            a = tl.load(wv + kv * D * DH + rd[:, None] * DH + rk[None, :],
                        mask=md[:, None] & (rk[None, :] < DH), other=0.0).to(tl.float32)  # [BD, BK]
            b = tl.load(wo + c * DH * D + rk[None, :] * D + rd[:, None],
                        mask=md[:, None] & (rk[None, :] < DH), other=0.0).to(tl.float32)  # W_O^T chunk [BD, BK]
            ov = tl.sum(a * b, axis=1)  # [BD]
            mask = (rn[:, None] < n) & md[None, :]
            gg = tl.load(g + rn[:, None] * D + rd[None, :], mask=mask, other=0.0).to(tl.float32)
            uu = tl.load(u + rn[:, None] * D + rd[None, :], mask=mask, other=0.0).to(tl.float32)
            gacc += tl.sum(gg * ov[None, :], axis=1)
            uacc += tl.sum(uu * ov[None, :], axis=1)
        s = gacc / (1.0 + tl.exp(-gacc)) * uacc
        tl.store(out + c * n + rn, s, mask=rn < n)

    @triton.jit
    def composition_kernel(wo, p, m, out, n, H, GROUP, D, DH,
                           BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
                           UPCAST: tl.constexpr, PREC: tl.constexpr):
        c = tl.program_id(0)
        nb = tl.program_id(1)
        layer = c // H
        kv = layer * (H // GROUP) + (c % H) // GROUP
        rn = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        x = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            rd = d0 + tl.arange(0, BLOCK_D)
            md = rd < D
            mm = tl.load(m + rn[:, None] * D + rd[None, :], mask=(rn[:, None] < n) & md[None, :], other=0.0)
            bt = tl.load(wo + c * DH * D + rk[None, :] * D + rd[:, None],
                         mask=md[:, None] & (rk[None, :] < DH), other=0.0)  # [BD, BK]
            if UPCAST:  # the interpreter's 16-bit dot is wrong
                mm = mm.to(tl.float32)
                bt = bt.to(tl.float32)
            x = tl.dot(mm, bt, x, input_precision=PREC)  # 16-bit operands: tensor cores, fp32 sums
        pk = tl.load(p + kv * DH * DH + rk[:, None] * DH + rk[None, :],
                     mask=(rk[:, None] < DH) & (rk[None, :] < DH), other=0.0).to(tl.float32)
        y = tl.dot(x, pk, input_precision=PREC)
        num = tl.sqrt(tl.maximum(tl.sum(y * x, axis=1), 0.0))
        tl.store(out + c * n + rn, num, mask=rn < n)

    _KERNELS.update(paper=paper_kernel, composition=composition_kernel)
    return _KERNELS


def _blocks(n, dh):
    interp = Lh.interpreting()  # the interpreter is fastest with few, large blocks
    return dict(BLOCK_N=min(64, max(16, Lh.next_pow2(n))), BLOCK_D=128 if interp else 64,
                BLOCK_K=max(16, Lh.next_pow2(dh)))


def paper_terms_triton(W_V, W_O, G, U):
    """[L*H, n] per-head, per-neuron terms of the paper's score (the Triton kernel)."""
    _check("channel_paper_terms", W_O, "W_V", W_V, {"G": G, "U": U})
    Lh.require_kernel_device("channel_paper_terms", W_O)
    L, H, DH, D = W_O.shape
    KV, n = W_V.shape[1], G.shape[0]
    out = torch.empty(L * H, n, device=W_O.device, dtype=torch.float32)
    if n == 0:
        return out
    b = _blocks(n, DH)
    grid = (L * H, -(-n // b["BLOCK_N"]))
    _kernels()["paper"][grid](W_V.contiguous(), W_O.contiguous(), G.contiguous(), U.contiguous(), out, n, H,
                              H // KV, D, DH, **b)
    return out


def composition_numerators_triton(W_O, P, M):
    """[L*H, n] ||m_i (W_V^c W_O^c)^T|| for every head c and row m_i (the Triton kernel).
    M is read in W_O's dtype: 16-bit weights run the M W_O^T products on tensor cores
    with fp32 sums; fp32 weights in full precision unless torch allows TF32 matmuls."""
    _check("composition_numerators", W_O, "P", P, {"M": M})
    Lh.require_kernel_device("composition_numerators", W_O)
    L, H, DH, D = W_O.shape
    KV, n = P.shape[1], M.shape[0]
    out = torch.empty(L * H, n, device=W_O.device, dtype=torch.float32)
    if n == 0:
        return out
    interp = Lh.interpreting()
    b = _blocks(n, DH)
    grid = (L * H, -(-n // b["BLOCK_N"]))
    _kernels()["composition"][grid](W_O.contiguous(), P.float().contiguous(), M.to(W_O.dtype).contiguous(), out, n,
                                    H, H // KV, D, DH, UPCAST=interp and W_O.dtype != torch.float32,
                                    PREC=Lh.fp32_dot_precision(interp), **b)
    return out


# ----------------------------------------------------------------------------------
# The registered ops
@torch.library.custom_op("verilens::channel_paper_terms", mutates_args=())
def paper_terms_op(W_V: torch.Tensor, W_O: torch.Tensor, G: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    return paper_terms_ref(W_V, W_O, G, U)


@paper_terms_op.register_kernel("cuda")
def _paper_cuda(W_V, W_O, G, U):
    return (paper_terms_triton if W_O.dtype in KERNEL_DTYPES else paper_terms_ref)(W_V, W_O, G, U)


@paper_terms_op.register_fake
def _paper_fake(W_V, W_O, G, U):
    L, H = W_O.shape[:2]
    return W_O.new_empty((L * H, G.shape[0]), dtype=torch.promote_types(W_O.dtype, torch.float32))


@torch.library.custom_op("verilens::composition_numerators", mutates_args=())
def composition_numerators_op(W_O: torch.Tensor, P: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    return composition_numerators_ref(W_O, P, M)


@composition_numerators_op.register_kernel("cuda")
def _composition_cuda(W_O, P, M):
    return (composition_numerators_triton if W_O.dtype in KERNEL_DTYPES else composition_numerators_ref)(W_O, P, M)


@composition_numerators_op.register_fake
def _composition_fake(W_O, P, M):
    L, H = W_O.shape[:2]
    return W_O.new_empty((L * H, M.shape[0]), dtype=torch.promote_types(W_O.dtype, torch.float32))


def paper_terms(W_V, W_O, G, U):
    """The registered op, checked (see verilens.ops.channel_paper_terms)."""
    _check("channel_paper_terms", W_O, "W_V", W_V, {"G": G, "U": U})
    return torch.ops.verilens.channel_paper_terms(W_V, W_O, G, U)


def composition_numerators(W_O, P, M):
    """The registered op, checked (see verilens.ops.composition_numerators)."""
    _check("composition_numerators", W_O, "P", P, {"M": M})
    return torch.ops.verilens.composition_numerators(W_O, P, M)
