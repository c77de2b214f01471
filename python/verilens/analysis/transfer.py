"""Carry a probe from one model to another (PAPER.md section 6, last bullet).

The authors map the 3B model's probe into DeepSeek-R1-Distill-Qwen-14B with a ridge map
between the two models' unembedding rows at 100,000 random shared token ids,
T = (A^T A + 0.1 I)^-1 A^T B (no centring), new probe = W T, and layer L of the source
maps to int(L / L_source * L_target). Tokens are matched by text, so the two models
need not share a tokenizer (for Qwen-family pairs the match is the identity)."""
from __future__ import annotations

import torch

from ..errors import VerilensError
from ..geometry.emb2emb import fit_map
from ..geometry.vocab import shared_vocab


def layer_map(layer: int, n_source: int, n_target: int) -> int:
    """The paper's proportional layer map: int(L / n_source * n_target)."""
    return int(layer / n_source * n_target)


def transfer_probe(W: torch.Tensor, source, target, n_tokens: int = 100_000, alpha: float = 0.1,
                   seed: int = 0) -> torch.Tensor:
    """Probe W [L_source, d_source, 2] of `source` (a HookedModel) as a probe
    [L_target, d_target, 2] of `target`. Each target layer takes the source layer that
    `layer_map` sends to it (the first, where several land on one); a target layer none
    lands on takes the one before it."""
    W = torch.as_tensor(W, dtype=torch.float32)
    Ls, Lt = source.cfg.n_layers, target.cfg.n_layers
    if W.dim() != 3 or W.shape[-1] != 2 or tuple(W.shape[:2]) != (Ls, source.cfg.d_model):
        raise VerilensError(f"probe must be [{Ls}, {source.cfg.d_model}, 2] for the source model, got {tuple(W.shape)}")
    idx_a, idx_b, _ = shared_vocab(source.tokenizer, target.tokenizer, max_tokens=n_tokens, seed=seed)
    A = source.W_U.T[torch.as_tensor(idx_a)].float().cpu()  # unembedding rows [n, d_source]
    B = target.W_U.T[torch.as_tensor(idx_b)].float().cpu()
    T = fit_map(A, B, alpha=alpha, center=False).W.float()  # [d_source, d_target]
    mapped = torch.einsum("ldc,de->lec", W, T)  # every source layer, in the target's width
    src_of = {}
    for L in range(Ls):
        src_of.setdefault(layer_map(L, Ls, Lt), L)
    out, last = [], 0
    for lt in range(Lt):
        last = src_of.get(lt, last)
        out.append(mapped[last])
    return torch.stack(out)
