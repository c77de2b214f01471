"""GLU value vectors aligned with the probe (PAPER.md section 3).

In a SiLU-GLU MLP, neuron i writes column i of down_proj (its value vector) scaled by
SiLU(gate_i . x) * (up_i . x). Neurons are scored by the cosine of their value vector
with a probe class vector."""
from __future__ import annotations

import torch

from ..errors import VerilensError


def upper_half(n_layers: int) -> list[int]:
    """The paper's 18..35 of 36 layers, scaled to any depth."""
    return list(range(n_layers // 2, n_layers))


@torch.no_grad()
def value_vector_cosines(model, direction: torch.Tensor, layers=None) -> torch.Tensor:
    """[len(layers), d_mlp] cosine of every value vector with `direction` [d_model]."""
    model.require_glu()
    layers = range(model.cfg.n_layers) if layers is None else layers
    d = torch.as_tensor(direction, dtype=torch.float32)
    if d.shape != (model.cfg.d_model,):
        raise VerilensError(f"direction must be [d_model={model.cfg.d_model}], got {tuple(d.shape)}")
    d = d / d.norm().clamp(min=1e-12)
    out = []
    for l in layers:
        V = model.layer_weights(l)["W_out"].T.float()  # [d_model, d_mlp]: columns are value vectors
        out.append((d.to(V.device) @ V) / V.norm(dim=0).clamp(min=1e-12))
    return torch.stack(out).cpu()


def select_variant_a(model, W: torch.Tensor, layers=None, label: int | tuple = 1, top_k: int = 50):
    """For each layer L in `layers` (default: upper half), the top_k neurons of layer L by
    cosine with W[L, :, label]. label 1 -> GLU_valid; (0, 1) -> both sets. Returns a
    list of (layer, index), in layer order."""
    layers = upper_half(model.cfg.n_layers) if layers is None else list(layers)
    labels = (label,) if isinstance(label, int) else tuple(label)
    out = []
    for lab in labels:
        for L in layers:
            cos = value_vector_cosines(model, W[L, :, lab], [L])[0]
            idx = torch.topk(cos, min(top_k, cos.numel())).indices
            out += [(L, int(i)) for i in idx]
    return out


def select_variant_b(model, W: torch.Tensor, layers=None, label: int = 1, top_k: int = 50, top_n: int = 200):
    """For each probe layer L in `layers` and each layer l <= L: the top_k neurons of layer
    l by cosine with W[L, :, label]; pooled, sorted by cosine, de-duplicated by
    (layer, index), the top_n kept. Returns [(layer, index, cosine)]."""
    layers = upper_half(model.cfg.n_layers) if layers is None else list(layers)
    pool = []
    for L in layers:
        cos = value_vector_cosines(model, W[L, :, label], range(L + 1))  # [L+1, d_mlp]
        vals, idx = torch.topk(cos, min(top_k, cos.shape[1]), dim=1)
        for l in range(L + 1):
            pool += [(float(v), l, int(i)) for v, i in zip(vals[l], idx[l])]
    pool.sort(key=lambda t: -t[0])
    seen, out = set(), []
    for c, l, i in pool:
        if (l, i) not in seen:
            seen.add((l, i))
            out.append((l, i, c))
        if len(out) == top_n:
            break
    return out
