"""Test-only oracles for the channel scores: every head's d_model x d_model OV matrix
formed explicitly (slow), to check verilens.analysis.channel's low-rank formulas."""
import torch


def _up_rows(model, neurons, key="W_in"):
    return torch.stack([model.layer_weights(l)[key][:, i] for l, i in neurons]).float()


def composition_matrix_naive(model, neurons) -> torch.Tensor:
    """[n, L, H]: ||m_i OV^T|| / (||m_i|| ||OV||_F) with OV = W_V^h W_O^h formed in full."""
    M = _up_rows(model, neurons)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = torch.empty(len(neurons), L, H)
    W_V, W_O = model.W_V.float(), model.W_O.float()
    for l in range(L):
        for h in range(H):
            ov = W_V[l, h] @ W_O[l, h]  # [d, d]
            out[:, l, h] = (M @ ov.T).norm(dim=1) / (M.norm(dim=1) * ov.norm())
    return out


def channel_scores_naive(model, neurons) -> torch.Tensor:
    """The paper's score: OV matrix per head, its diagonal, a loop over neurons."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    W_V, W_O = model.W_V.float(), model.W_O.float()
    G, U = _up_rows(model, neurons, "W_gate"), _up_rows(model, neurons, "W_in")
    out = torch.zeros(L, H)
    for l in range(L):
        for h in range(H):
            ov = torch.diagonal(W_V[l, h] @ W_O[l, h])
            out[l, h] = torch.stack([torch.nn.functional.silu(g @ ov) * (u @ ov) for g, u in zip(G, U)]).mean()
    return out
