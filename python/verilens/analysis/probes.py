"""Linear probes on the residual stream at the verdict (" (") tokens, PAPER.md section 3.

One 2-way softmax classifier without bias per layer, stored as one float32 tensor
W [n_layers, d_model, 2] (class 0 = invalid / "not", class 1 = valid / "this"): the
layout of the authors' released probe file, so it loads as is. Training follows the
paper: init randn / sqrt(d_model); AdamW lr 1e-4, betas (0.9, 0.99), weight decay
0.01; batches of 128 generations; 256 validation generations; early stopping with
patience 10 evaluations (here: per layer, keeping each layer's best weights)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import VerilensError


@dataclass
class ProbeResult:
    W: torch.Tensor  # [n_layers, d_model, 2]
    val_accuracy: list[float]  # per layer
    train_accuracy: list[float]
    steps: int
    n_train: int  # generations
    n_val: int


def _batches(groups, batch_generations, gen):
    order = torch.randperm(len(groups), generator=gen)
    for i in range(0, len(order), batch_generations):
        yield torch.cat([groups[j] for j in order[i:i + batch_generations].tolist()])


def train_probes(acts: torch.Tensor, labels: torch.Tensor, generation: torch.Tensor, seed: int = 0,
                 lr: float = 1e-4, batch_generations: int = 128, val_generations: int = 256,
                 patience: int = 10, eval_every: int = 10, max_steps: int = 20000) -> ProbeResult:
    """Train per-layer probes.

    acts [n, n_layers, d_model] (resid_post at each verdict token), labels [n] (0/1),
    generation [n]: which generation each sample came from (batches and the validation
    split are by generation, so no generation is in both)."""
    if acts.dim() != 3 or acts.shape[0] != labels.shape[0] or labels.shape[0] != generation.shape[0]:
        raise VerilensError("acts must be [n, n_layers, d_model] with one label and generation per row")
    labels = labels.long()
    if set(labels.unique().tolist()) - {0, 1}:
        raise VerilensError("labels must be 0 (invalid) or 1 (valid)")
    if labels.unique().numel() < 2:
        raise VerilensError("probes need both valid and invalid verdicts; got only one class")
    gens = generation.unique()
    if len(gens) < 4:
        raise VerilensError(f"probes need at least 4 generations, got {len(gens)}")
    g = torch.Generator().manual_seed(seed)
    gens = gens[torch.randperm(len(gens), generator=g)]
    n_val = min(val_generations, max(1, len(gens) // 5))  # keep most data for training when small
    val_set, train_set = gens[:n_val], gens[n_val:]
    acts = acts.float()
    val_idx = torch.isin(generation, val_set).nonzero()[:, 0]
    train_groups = [(generation == x).nonzero()[:, 0] for x in train_set.tolist()]
    _, L, d = acts.shape
    W = (torch.randn(L, d, 2, generator=g) / d ** 0.5).requires_grad_()
    opt = torch.optim.AdamW([W], lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    Xv, yv = acts[val_idx], labels[val_idx]

    def evaluate(idx_X, idx_y):
        with torch.no_grad():
            logits = torch.einsum("nld,ldc->nlc", idx_X, W)
            loss = torch.nn.functional.cross_entropy(logits.permute(0, 2, 1), idx_y[:, None].expand(-1, L),
                                                     reduction="none").mean(0)
            acc = (logits.argmax(-1) == idx_y[:, None]).float().mean(0)
        return loss, acc

    best_loss = torch.full((L,), float("inf"))
    best_W = W.detach().clone()
    best_acc = torch.zeros(L)
    bad_evals, step = 0, 0
    while step < max_steps and bad_evals < patience:
        for idx in _batches(train_groups, batch_generations, g):
            X, y = acts[idx], labels[idx]
            logits = torch.einsum("nld,ldc->nlc", X, W)
            loss = torch.nn.functional.cross_entropy(logits.permute(0, 2, 1), y[:, None].expand(-1, L))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % eval_every == 0:
                vloss, vacc = evaluate(Xv, yv)
                improved = vloss < best_loss - 1e-6
                if improved.any():
                    best_loss = torch.where(improved, vloss, best_loss)
                    best_W[improved] = W.detach()[improved]
                    best_acc = torch.where(improved, vacc, best_acc)
                    bad_evals = 0
                else:
                    bad_evals += 1
            if step >= max_steps or bad_evals >= patience:
                break
    W = best_W
    train_idx = torch.cat(train_groups)
    _, tacc = evaluate(acts[train_idx], labels[train_idx])
    return ProbeResult(W=best_W, val_accuracy=best_acc.tolist(), train_accuracy=tacc.tolist(), steps=step,
                       n_train=len(train_set), n_val=len(val_set))


def save_probe(W: torch.Tensor, path) -> None:
    """Write W [n_layers, d_model, 2] as a float32 tensor in a .pt file (atomically)."""
    W = torch.as_tensor(W)
    if W.dim() != 3 or W.shape[-1] != 2:
        raise VerilensError(f"a probe is [n_layers, d_model, 2], got {tuple(W.shape)}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(W.detach().to(torch.float32).cpu().contiguous(), tmp)
    os.replace(tmp, path)


def load_probe(path, model=None) -> torch.Tensor:
    """Read a probe file (ours or the authors'); checks its shape against `model`."""
    path = Path(path)
    if not path.exists():
        raise VerilensError(f"probe file not found: {path}")
    try:
        W = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear error
        raise VerilensError(f"{path} is not a probe file (a torch tensor saved with torch.save): {e}") from e
    if isinstance(W, dict) and len(W) == 1:
        W = next(iter(W.values()))
    if not isinstance(W, torch.Tensor) or W.dim() != 3 or W.shape[-1] != 2:
        shape = tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__
        raise VerilensError(f"{path}: a probe is a tensor [n_layers, d_model, 2], got {shape}")
    if not W.is_floating_point():
        raise VerilensError(f"{path}: a probe holds floating-point weights, got {W.dtype}")
    finite = torch.isfinite(W).flatten(1).all(1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        raise VerilensError(f"{path}: the probe weights of layers {bad} hold NaN or inf; retrain or repair the file")
    if model is not None and tuple(W.shape[:2]) != (model.cfg.n_layers, model.cfg.d_model):
        raise VerilensError(
            f"{path}: probe shape {tuple(W.shape)} does not fit the model "
            f"({model.cfg.n_layers} layers, d_model {model.cfg.d_model}); use transfer_probe for another model"
        )
    return W.float()
