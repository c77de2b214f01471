"""Inter-layer channel scores between attention heads and GLU neurons (PAPER.md section 5).

"paper": the authors' score. ov_h = diag(W_V^h W_O^h) (a d_model vector; GQA KV heads
repeated per query head), Score(h) = mean_i SiLU(g_i . ov_h) * (u_i . ov_h) over the
neurons' gate rows g_i and up rows u_i.

"composition": the Frobenius composition score (Elhage et al. 2021) of head h into the
neurons' input rows M = W_in[N] (up_proj rows),
    ||M (W_V^h W_O^h)^T||_F / (||M||_F ||W_V^h W_O^h||_F),
computed from the low-rank factors A = W_V^h [d_model, d_head], B = W_O^h
[d_head, d_model]: with X = M B^T [n, d_head], ||M (AB)^T||_F^2 = sum(X (A^T A) * X)
and ||AB||_F^2 = sum((A^T A) * (B B^T)); no d_model x d_model matrix is ever formed.
"""
from __future__ import annotations

import torch

from ..errors import VerilensError


def _neurons(model, neurons):
    model._require_glu()
    pairs = [(int(n[0]), int(n[1])) for n in neurons]
    if not pairs:
        raise VerilensError("channel scores need at least one neuron")
    for l, i in pairs:
        if not 0 <= l < model.cfg.n_layers or not 0 <= i < model.cfg.d_mlp:
            raise VerilensError(f"neuron ({l}, {i}) out of range ({model.cfg.n_layers} layers, d_mlp {model.cfg.d_mlp})")
    return pairs


def _rows(model, pairs, which):
    """[n, d_model] gate or up rows of the neurons."""
    out = []
    for l, i in pairs:
        mlp = model.blocks[l].mlp
        out.append((mlp.gate_proj if which == "gate" else mlp.up_proj).weight[i])
    return torch.stack(out).float()


def ov_diagonals(model) -> torch.Tensor:
    """[n_layers, n_heads, d_model]: diag(W_V^h W_O^h) of every head."""
    return torch.einsum("lhmk,lhkm->lhm", model.W_V.float(), model.W_O.float())


def channel_scores(model, neurons, method: str = "paper") -> torch.Tensor:
    """[n_layers, n_heads] scores of every head for the neuron set [(layer, index), ...]."""
    pairs = _neurons(model, neurons)
    if method == "paper":
        ov = ov_diagonals(model).flatten(0, 1)  # [L*H, d]
        g, u = _rows(model, pairs, "gate").to(ov.device), _rows(model, pairs, "up").to(ov.device)
        s = torch.nn.functional.silu(ov @ g.T) * (ov @ u.T)  # [L*H, n]
        return s.mean(1).view(model.cfg.n_layers, model.cfg.n_heads).cpu()
    if method == "composition":
        M = _rows(model, pairs, "up")
        per = composition_matrix(model, neurons)  # [n, L, H] per-neuron scores
        # head-level: ||M (AB)^T||_F / (||M||_F ||AB||_F) from the per-neuron squared numerators
        w = M.norm(dim=1) ** 2  # ||m_i||^2
        num = (per ** 2 * w[:, None, None].to(per)).sum(0)
        return (num.sqrt() / w.sum().sqrt()).cpu()
    raise VerilensError(f"method must be 'paper' or 'composition', got {method!r}")


def composition_matrix(model, neurons, chunk_heads: int = 64) -> torch.Tensor:
    """[n_neurons, n_layers, n_heads]: composition score of each head into each neuron's
    up row, ||m_i (W_V^h W_O^h)^T|| / (||m_i|| ||W_V^h W_O^h||_F), from the factors."""
    pairs = _neurons(model, neurons)
    M = _rows(model, pairs, "up")  # [n, d]
    A = model.W_V.float().flatten(0, 1)  # [LH, d, dh]
    B = model.W_O.float().flatten(0, 1)  # [LH, dh, d]
    M = M.to(A.device)
    out = []
    for s in range(0, A.shape[0], chunk_heads):
        a, b = A[s:s + chunk_heads], B[s:s + chunk_heads]
        ata = a.transpose(1, 2) @ a  # [c, dh, dh]
        bbt = b @ b.transpose(1, 2)
        X = torch.einsum("nm,ckm->cnk", M, b)  # M B^T per head: [c, n, dh]
        num = ((X @ ata) * X).sum(-1).clamp(min=0).sqrt()  # [c, n]
        fro = (ata * bbt).sum((-1, -2)).clamp(min=0).sqrt()  # [c]
        out.append(num / fro[:, None].clamp(min=1e-30))
    S = torch.cat(out)  # [LH, n]
    S = S / M.norm(dim=1)[None].clamp(min=1e-30)
    return S.T.reshape(len(pairs), model.cfg.n_layers, model.cfg.n_heads).cpu()


def composition_matrix_naive(model, neurons) -> torch.Tensor:
    """Reference: forms every head's d_model x d_model OV matrix (slow; for tests and
    benchmarks only)."""
    pairs = _neurons(model, neurons)
    M = _rows(model, pairs, "up")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = torch.empty(len(pairs), L, H)
    W_V, W_O = model.W_V.float(), model.W_O.float()
    for l in range(L):
        for h in range(H):
            ov = W_V[l, h] @ W_O[l, h]  # [d, d]
            out[:, l, h] = (M @ ov.T).norm(dim=1) / (M.norm(dim=1) * ov.norm())
    return out


def channel_scores_naive(model, neurons) -> torch.Tensor:
    """Reference for method="paper": OV matrix per head, its diagonal, a loop over neurons."""
    pairs = _neurons(model, neurons)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    W_V, W_O = model.W_V.float(), model.W_O.float()
    out = torch.zeros(L, H)
    for l in range(L):
        for h in range(H):
            ov = torch.diagonal(W_V[l, h] @ W_O[l, h])
            vals = []
            for nl, i in pairs:
                mlp = model.blocks[nl].mlp
                g, u = mlp.gate_proj.weight[i].float(), mlp.up_proj.weight[i].float()
                vals.append(torch.nn.functional.silu(g @ ov) * (u @ ov))
            out[l, h] = torch.stack(vals).mean()
    return out
