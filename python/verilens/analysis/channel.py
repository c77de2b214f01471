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

from .. import ops
from ..errors import VerilensError


def _neurons(model, neurons):
    model.require_glu()
    pairs = [(int(n[0]), int(n[1])) for n in neurons]
    if not pairs:
        raise VerilensError("channel scores need at least one neuron")
    for l, i in pairs:
        if not 0 <= l < model.cfg.n_layers or not 0 <= i < model.cfg.d_mlp:
            raise VerilensError(f"neuron ({l}, {i}) out of range ({model.cfg.n_layers} layers, d_mlp {model.cfg.d_mlp})")
    return pairs


def _rows(model, pairs, which):
    """[n, d_model] gate or up rows of the neurons."""
    key = "W_gate" if which == "gate" else "W_in"
    return torch.stack([model.layer_weights(l)[key][:, i] for l, i in pairs]).float()


def _kv_weights(model):
    """W_V per KV head [L, KV, d, dh] (not repeated) and W_O [L, H, dh, d], float32."""
    return model.stacked("W_V").float(), model.W_O.float()


def ov_diagonals(model) -> torch.Tensor:
    """[n_layers, n_heads, d_model]: diag(W_V^h W_O^h) of every head."""
    return torch.einsum("lhmk,lhkm->lhm", model.W_V.float(), model.W_O.float())


def paper_scores(W_V: torch.Tensor, W_O: torch.Tensor, G: torch.Tensor, U: torch.Tensor,
                 backend: str = "auto") -> torch.Tensor:
    """The paper's channel score from weights: W_V [L, KV, d, dh] (per KV head; shared by
    its query heads), W_O [L, H, dh, d], gate rows G and up rows U [n, d] of the neurons.
    Returns [L, H]: mean_i SiLU(g_i . ov_h) * (u_i . ov_h), ov_h = diag(W_V^h W_O^h).
    One Triton kernel on CUDA, batched matmuls elsewhere (verilens.ops.channel_paper_terms;
    `backend` as there)."""
    L, H = W_O.shape[:2]
    return ops.channel_paper_terms(W_V, W_O, G.to(W_O.device), U.to(W_O.device), backend=backend).mean(1).view(L, H)


def composition_scores(W_V: torch.Tensor, W_O: torch.Tensor, M: torch.Tensor, chunk_heads: int = 64,
                       backend: str = "auto") -> torch.Tensor:
    """[n, L, H] composition score of every head into every row of M [n, d] (the neurons'
    up rows), ||m_i (W_V^h W_O^h)^T|| / (||m_i|| ||W_V^h W_O^h||_F), from the factors:
    with X = m B^T and P = A^T A per KV head (A = W_V^h, B = W_O^h), the numerator is
    sqrt(X P X^T) and ||AB||_F^2 = sum(P * B B^T). No d x d matrix is formed. The
    numerators run in one Triton kernel on CUDA, in chunked batched fp32 matmuls elsewhere
    (verilens.ops.composition_numerators; `backend` as there)."""
    L, H, dh, d = W_O.shape
    KV = W_V.shape[1]
    # 16-bit weights on a GPU: the M W_O^T products in that dtype (tensor cores, fp32 sums);
    # everything else, and everything on the CPU, in fp32
    cdt = W_O.dtype if W_O.is_cuda else torch.float32
    M = M.to(W_O.device, cdt)
    P_kv = W_V.float().transpose(-1, -2) @ W_V.float()  # [L, KV, dh, dh]: once per KV head
    P = P_kv.repeat_interleave(H // KV, dim=1).flatten(0, 1)  # [L*H, dh, dh]
    B = W_O.flatten(0, 1)
    num = ops.composition_numerators(W_O if W_O.is_cuda else W_O.float(), P_kv, M, backend=backend)
    fro = []
    for s in range(0, B.shape[0], chunk_heads):
        b = B[s:s + chunk_heads].float()
        fro.append((P[s:s + chunk_heads] * (b @ b.transpose(1, 2))).sum((-1, -2)).clamp(min=0).sqrt())
    fro = torch.cat(fro)
    S = num / fro[:, None].clamp(min=1e-30) / M.float().norm(dim=1)[None].clamp(min=1e-30)  # [L*H, n]
    return S.T.reshape(M.shape[0], L, H)


@torch.no_grad()
def channel_scores(model, neurons, method: str = "paper") -> torch.Tensor:
    """[n_layers, n_heads] scores of every head for the neuron set [(layer, index), ...]."""
    pairs = _neurons(model, neurons)
    if method not in ("paper", "composition"):
        raise VerilensError(f"method must be 'paper' or 'composition', got {method!r}")
    W_V, W_O = _kv_weights(model)
    if method == "paper":
        return paper_scores(W_V, W_O, _rows(model, pairs, "gate"), _rows(model, pairs, "up")).cpu()
    M = _rows(model, pairs, "up").to(W_O.device)
    per = composition_scores(W_V, W_O, M)  # [n, L, H]
    # head-level: ||M (AB)^T||_F / (||M||_F ||AB||_F) from the per-neuron squared numerators
    w = M.norm(dim=1) ** 2  # ||m_i||^2
    num = (per ** 2 * w[:, None, None].to(per)).sum(0)
    return (num.sqrt() / w.sum().sqrt()).cpu()


@torch.no_grad()
def composition_matrix(model, neurons, chunk_heads: int = 64) -> torch.Tensor:
    """[n_neurons, n_layers, n_heads]: composition score of each head into each neuron's up row."""
    pairs = _neurons(model, neurons)
    W_V, W_O = _kv_weights(model)
    return composition_scores(W_V, W_O, _rows(model, pairs, "up"), chunk_heads).cpu()

