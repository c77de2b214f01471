"""Batched OV x MLP-input kernels for the channel scores (PAPER.md section 5), all heads
at once, never forming a d_model x d_model matrix.

    paper_terms(W_V, W_O, G, U)[c, i] = SiLU(g_i . ov_c) * (u_i . ov_c),
        ov_c[m] = sum_k W_V^c[m, k] W_O^c[k, m]   (the diagonal of head c's OV matrix)
    composition_numerators(W_O, P, M)[c, i] = sqrt(x P_c x^T),  x = m_i (W_O^c)^T
        (= ||m_i (W_V^c W_O^c)^T|| with P_c = (W_V^c)^T W_V^c)

Heads are flattened to c = layer * H + head. W_V is given per KV head [L, KV, d, dh] and
shared by the H / KV query heads of its group inside the kernel (no repeat in memory);
P [L, KV, dh, dh] likewise. One program handles one head and a block of neurons: it
streams the head's weights over d_model in BLOCK_D chunks. The torch references (`_ref`)
are what verilens.analysis.channel runs on CPU; tests compare them under TRITON_INTERPRET=1.
"""
from __future__ import annotations


import torch

from verilens.errors import VerilensError
from verilens.kernels._env import fp32_dot_precision, interpreting


def paper_terms_ref(W_V, W_O, G, U):
    L, H = W_O.shape[:2]
    W_V = W_V.repeat_interleave(H // W_V.shape[1], dim=1) if W_V.shape[1] != H else W_V
    ov = torch.einsum("lhmk,lhkm->lhm", W_V.float(), W_O.float()).flatten(0, 1)
    return torch.nn.functional.silu(ov @ G.float().T) * (ov @ U.float().T)


def composition_numerators_ref(W_O, P, M):
    L, H = W_O.shape[:2]
    P = P.float().repeat_interleave(H // P.shape[1], dim=1).flatten(0, 1)
    X = torch.einsum("nm,ckm->cnk", M.float(), W_O.float().flatten(0, 1))
    return ((X @ P) * X).sum(-1).clamp(min=0).sqrt()


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _check(W_O, others):
    if W_O.dim() != 4:
        raise VerilensError(f"W_O must be [L, H, d_head, d_model], got {tuple(W_O.shape)}")
    devs = {t.device for t in (W_O, *others)}
    if len(devs) != 1:
        raise VerilensError(f"all inputs must be on one device, got {sorted(map(str, devs))}")


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
    interp = interpreting()  # the interpreter is fastest with few, large blocks
    return dict(BLOCK_N=min(64, max(16, _next_pow2(n))), BLOCK_D=128 if interp else 64,
                BLOCK_K=max(16, _next_pow2(dh)))


def paper_terms(W_V, W_O, G, U):
    """[L*H, n] per-head, per-neuron terms of the paper's score (Triton)."""
    _check(W_O, (W_V, G, U))
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


def composition_numerators(W_O, P, M):
    """[L*H, n] ||m_i (W_V^c W_O^c)^T|| for every head c and row m_i (Triton). M is read in
    W_O's dtype: 16-bit weights run the M W_O^T products on tensor cores with fp32 sums;
    fp32 weights in full precision unless torch allows TF32 matmuls."""
    _check(W_O, (P, M))
    L, H, DH, D = W_O.shape
    KV, n = P.shape[1], M.shape[0]
    out = torch.empty(L * H, n, device=W_O.device, dtype=torch.float32)
    if n == 0:
        return out
    interp = interpreting()
    prec = fp32_dot_precision(interp)
    b = _blocks(n, DH)
    grid = (L * H, -(-n // b["BLOCK_N"]))
    _kernels()["composition"][grid](W_O.contiguous(), P.float().contiguous(), M.to(W_O.dtype).contiguous(), out, n,
                                    H, H // KV, D, DH, UPCAST=interp and W_O.dtype != torch.float32, PREC=prec, **b)
    return out
