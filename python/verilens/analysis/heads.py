"""Previous-token heads: heads that read the target number (PAPER.md section 4).

Context: a correct attempt cut right before its " (" (the last token is the attempt's
final number). Density of head (l, h): the attention weight from the LAST query
position summed over the key positions holding the target number's tokens, counting
only keys before the attempts begin (before " Let's try different"), averaged over
contexts."""
from __future__ import annotations

import re

import torch

from ..errors import VerilensError

ATTEMPTS_START = " Let's try different"


def target_key_positions(model, text: str, target: int, keys: str = "all") -> list[int]:
    """Token indices (in model.tokenize(text) without padding) of every occurrence of the
    target number before the attempts begin.

    keys="all": every token of each occurrence (verilens' default: the whole number is
    what a head reads). keys="last": only the token holding each occurrence's last
    character, as the authors' code keeps the last token of each match
    (mech_interp.sync.py _get_occurrence_idxs, lines 446-452); --paper-settings. Both
    match the number on digit boundaries (their token match does not: a target 4 also
    matches the 4s of 44)."""
    if keys not in ("all", "last"):
        raise VerilensError(f"keys must be 'all' or 'last', not {keys!r}")
    # the last problem's turn: an in-context prompt (countdown.icl_prompt) holds solved
    # examples before it, whose numbers must not count
    cut = text.rfind(ATTEMPTS_START)
    cut = len(text) if cut < 0 else cut
    start = max(text.rfind("User:", 0, cut), text.rfind("<|im_start|>user", 0, cut), 0)
    head = text[:cut]
    enc = model.tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    spans = [(m.start() + start, m.end() + start) for m in re.finditer(rf"(?<!\d){int(target)}(?!\d)", head[start:])]
    offsets = enc["offset_mapping"]
    if keys == "last":
        return sorted({i for a, b in spans for i, (s, e) in enumerate(offsets) if s <= b - 1 < e})
    out = []
    for i, (s, e) in enumerate(offsets):
        if e > s and any(s < b and e > a for a, b in spans):
            out.append(i)
    return out


@torch.no_grad()
def target_attention_density(model, contexts, targets, batch_size: int = 16, keys: str = "all") -> torch.Tensor:
    """[n_layers, n_heads] mean attention from the last position to the target's tokens
    (`keys`: all of them, or the last of each occurrence; `target_key_positions`), averaged
    over every context (the authors' loop keeps only its last batch's list, a bug not
    reproduced)."""
    if len(contexts) != len(targets) or not contexts:
        raise VerilensError("need one target per context, and at least one context")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
    total = torch.zeros(L, H)
    for s in range(0, len(contexts), batch_size):
        texts, tg = contexts[s:s + batch_size], targets[s:s + batch_size]
        ids, mask = model.tokenize(list(texts))
        _, cache = model.run_with_cache(list(texts), names_filter=names, positions="last")
        pad = (mask == 0).sum(1)  # left padding shifts each row's token indices
        for r, (t, target) in enumerate(zip(texts, tg)):
            at = [int(pad[r]) + k for k in target_key_positions(model, t, target, keys)]
            if not at:
                raise VerilensError(f"context {s + r}: the target {target} does not occur before the attempts")
            for l in range(L):
                total[l] += cache["pattern", l][r, :, 0, at].sum(-1).float().cpu()
    return total / len(contexts)


def select_heads(density: torch.Tensor, threshold: float = 0.1, top_k: int | None = None):
    """Heads with density > threshold, the top_k of them (default: all), densest first."""
    flat = density.flatten()
    order = torch.argsort(flat, descending=True)
    H = density.shape[1]
    out = [(int(i) // H, int(i) % H) for i in order if flat[i] > threshold]
    return out if top_k is None else out[:top_k]
