"""Logit lens of directions (probe class vectors, GLU value vectors), with the script of
each top token: the authors saw English tokens on the valid side, Chinese on the invalid."""
from __future__ import annotations

import unicodedata

import torch


def script_of(token: str) -> str:
    """"cjk" if the token has a CJK character, "latin" if its letters are Latin, else "other"."""
    letters = [c for c in token if c.isalpha()]
    if any(_is_cjk(c) for c in token):
        return "cjk"
    if letters and all("LATIN" in unicodedata.name(c, "") for c in letters):
        return "latin"
    return "other"


def _is_cjk(c: str) -> bool:
    o = ord(c)
    return (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2A6DF or 0xF900 <= o <= 0xFAFF
            or 0x3040 <= o <= 0x30FF or 0xAC00 <= o <= 0xD7AF or 0x3000 <= o <= 0x303F or 0xFF00 <= o <= 0xFFEF)


def top_tokens(model, direction: torch.Tensor, k: int = 20, bottom: bool = False) -> dict:
    """Top (or bottom) k tokens of a direction through the final norm and unembedding,
    each with its script, and the share of each script among them."""
    logits = model.logit_lens(torch.as_tensor(direction, dtype=torch.float32)).float().cpu()
    vals, idx = torch.topk(-logits if bottom else logits, min(k, logits.numel()))
    toks = [model.tokenizer.decode([int(i)]) for i in idx]
    scripts = [script_of(t) for t in toks]
    share = {s: scripts.count(s) / len(scripts) for s in ("latin", "cjk", "other")}
    return {"tokens": [{"token": t, "id": int(i), "logit": float(v) * (-1 if bottom else 1), "script": s}
                       for t, i, v, s in zip(toks, idx, vals, scripts)], "script_share": share}
