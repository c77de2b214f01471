"""Linear probes on the residual stream at the verdict (" (") tokens, PAPER.md section 3.

One 2-way softmax classifier without bias per layer, stored as one float32 tensor
W [n_layers, d_model, 2] (class 0 = invalid / "not", class 1 = valid / "this"): the
layout of the authors' released probe file, so it loads as is. Training follows the
paper: init randn / sqrt(d_model); AdamW lr 1e-4, betas (0.9, 0.99), weight decay
0.01; batches of 128 generations; 256 validation generations; early stopping with
patience 10 evaluations (here: per layer, keeping each layer's best weights).
`train_probes_online` is the authors' released loop instead (src/probe.py), for
--paper-settings; docs/analysis.md lists where the two differ."""
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


def online_split(n_prompts: int, batch_prompts: int = 128, val_prompts: int = 256, seed: int = 0):
    """The prompts of the authors' online probe training: (validation prompts, training
    batches). As their src/probe.py get_dataloader(): a random split with `val_prompts` for
    validation; training batches of `batch_prompts` in a random order, one epoch, the last
    incomplete batch dropped (drop_last=True, also for validation)."""
    if n_prompts < val_prompts + batch_prompts:
        raise VerilensError(f"the authors' probe training needs {val_prompts} validation prompts and batches of "
                            f"{batch_prompts}: at least {val_prompts + batch_prompts} problems (--n), got {n_prompts}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_prompts, generator=g).tolist()
    val, train = order[:val_prompts], order[val_prompts:]
    val = val[: len(val) // batch_prompts * batch_prompts]
    train = [train[i] for i in torch.randperm(len(train), generator=g).tolist()]
    return val, [train[i:i + batch_prompts] for i in range(0, len(train) - batch_prompts + 1, batch_prompts)]


def train_probes_online(acts: torch.Tensor, labels: torch.Tensor, prompt: torch.Tensor, n_prompts: int, seed: int = 0,
                        lr: float = 1e-4, batch_prompts: int = 128, val_prompts: int = 256, eval_every: int = 50,
                        patience: int = 10, init: torch.Tensor | None = None) -> ProbeResult:
    """Per-layer probes trained as the authors' src/probe.py main() does (--paper-settings).

    acts [n, n_layers, d_model], labels [n] and prompt [n] (which of the `n_prompts`
    prompts each site came from; prompts without both verdicts have no sites). Their loop,
    on activations recorded once instead of generated per step:
    - one AdamW step per batch of `batch_prompts` prompts (not generations with both
      verdicts): a batch without any site makes no step and no evaluation, but counts in
      the step index; loss = cross entropy over the batch's sites, averaged over layers;
    - gradients are never zeroed between steps (their optimiser.zero_grad() runs once,
      before the loop), so each step uses the sum of all gradients so far: kept, as it
      shapes the probe they released;
    - evaluation after steps whose batch index is a multiple of `eval_every` (the first
      included): the layer-mean validation loss; the best probe so far is kept (theirs is
      saved to probe.pt) with its per-layer accuracy; training stops after `patience`
      evaluations without a lower loss, or at the end of the one epoch.
    `init` (default randn / sqrt(d_model) from `seed`) is for tests."""
    if acts.dim() != 3 or not acts.shape[0] == labels.shape[0] == prompt.shape[0]:
        raise VerilensError("acts must be [n, n_layers, d_model] with one label and prompt per row")
    labels = labels.long()
    val, batches = online_split(n_prompts, batch_prompts, val_prompts, seed)
    acts = acts.float()
    _, L, d = acts.shape
    if init is None:
        init = torch.randn(L, d, 2, generator=torch.Generator().manual_seed(seed)) / d ** 0.5
    W = init.clone().float().requires_grad_()
    opt = torch.optim.AdamW([W], lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    opt.zero_grad()  # once, as theirs

    def rows(prompts):
        return torch.isin(prompt, torch.tensor(prompts, dtype=prompt.dtype)).nonzero()[:, 0]

    def loss_acc(idx):
        logits = torch.einsum("nld,ldc->nlc", acts[idx], W)
        ce = torch.nn.functional.cross_entropy(logits.permute(0, 2, 1), labels[idx, None].expand(-1, L))
        return ce, (logits.argmax(-1) == labels[idx, None]).float().mean(0)

    val_idx = rows(val)
    if len(val_idx) == 0:
        raise VerilensError("no validation prompt has both verdicts: the authors' probe training has nothing to "
                            "evaluate on (use more problems, --n)")
    best_W, best_acc, lowest, bad, steps = None, None, float("inf"), 0, 0
    for b, batch in enumerate(batches):
        idx = rows(batch)
        if len(idx) == 0:
            continue  # "Valid inner batch not found. Skipping..."
        loss, _ = loss_acc(idx)
        loss.backward()
        opt.step()
        steps += 1
        if b % eval_every == 0:
            with torch.no_grad():
                vloss, vacc = loss_acc(val_idx)
            if float(vloss) < lowest:
                lowest, bad, best_W, best_acc = float(vloss), 0, W.detach().clone(), vacc
            else:
                bad += 1
                if bad >= patience:
                    break
    if best_W is None:
        raise VerilensError("the authors' probe training never evaluated (its first batch had no generation with "
                            "both verdicts); use more problems (--n)")
    train_idx = rows([p for batch in batches for p in batch])
    with torch.no_grad():
        W.data.copy_(best_W)
        _, tacc = loss_acc(train_idx)
    return ProbeResult(W=best_W, val_accuracy=best_acc.tolist(), train_accuracy=tacc.tolist(), steps=steps,
                       n_train=sum(map(len, batches)), n_val=len(val))


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
