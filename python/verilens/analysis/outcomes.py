"""Interventions with the paper's protocol, and how their outcomes are scored (PAPER.md section 6).

Contexts are attempts cut right before their " (". Greedy decoding, up to 100 new
tokens, stops at EOS or a blank line. Interventions act only on decoding steps whose
last input token is " (" (the step that predicts "this" / "not").

Outcomes of a continuation:
- fail: the model still verifies: its first verdict is "this works";
- success: verification disabled: it says "not" and the rest is only numbers,
  operators, parentheses and more "not"s (it rejects its correct answer and moves on);
- mix: "not" plus a give-away ("<answer>", "so the answer is", "equals", "Wait",
  "That works"), or no verdict at all;
- partial (general reasoning models, `partial=True`): it rejects ("not") and then
  corrects itself ("Wait", "That works", "this works")."""
from __future__ import annotations

import re

import torch

from ..hooks import interventions as iv

GIVE_AWAYS = ("<answer>", "so the answer is", "equals", "wait", "that works", "this works")
CORRECTIONS = ("wait", "that works", "this works", "actually")
_CLEAN = re.compile(r"[\d\s+\-*/=().,:]*")


def classify(continuation: str, partial: bool = False) -> str:
    """"success" | "mix" | "fail" (| "partial") for the text generated after the context."""
    text = continuation.lower()
    i_not, i_works = text.find("not"), text.find("this works")
    if i_works >= 0 and (i_not < 0 or i_works < i_not):
        return "fail"
    if i_not < 0:
        return "mix"  # no verdict at all: neither verified nor rejected
    after = text[i_not:]
    if partial and any(c in after for c in CORRECTIONS):
        return "partial"
    if i_works >= 0:
        return "fail"  # "this works" after all (the paper: Fail = contains "this works")
    if any(g in text for g in GIVE_AWAYS):
        return "mix"
    return "success" if _CLEAN.fullmatch(text.replace("not", "")) else "mix"


def continue_contexts(model, contexts, max_new_tokens=100, batch_size=32, progress=False, desc="continue"):
    """Greedy continuations of `contexts` under the model's active interventions."""
    from tqdm.auto import tqdm

    out = []
    for s in tqdm(range(0, len(contexts), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = list(contexts[s:s + batch_size])
        texts = model.generate(chunk, max_new_tokens=max_new_tokens, stop=["\n\n"])
        out += [t[len(c):] for t, c in zip(texts, chunk)]
    return out


def outcome_table(labels) -> dict:
    """Fractions and counts of each outcome."""
    n = max(1, len(labels))
    kinds = ["success", "mix", "fail"] + (["partial"] if "partial" in labels else [])
    return {**{k: labels.count(k) / n for k in kinds}, "counts": {k: labels.count(k) for k in kinds},
            "n": len(labels)}


def run_condition(model, contexts, interventions=(), max_new_tokens=100, batch_size=32, partial=False,
                  progress=False, desc="condition"):
    """Continue every context with `interventions` on the " (" steps; returns
    (outcome table, continuations)."""
    trigger = iv.at_token(" (")
    if interventions:
        with model.intervene(*interventions, when=trigger):
            conts = continue_contexts(model, contexts, max_new_tokens, batch_size, progress, desc)
    else:
        conts = continue_contexts(model, contexts, max_new_tokens, batch_size, progress, desc)
    labels = [classify(c, partial) for c in conts]
    return outcome_table(labels), conts


def accepted_rate(continuations) -> float:
    """Share of continuations whose first verdict is "this works" (steering of wrong attempts)."""
    return sum(classify(c) == "fail" for c in continuations) / max(1, len(continuations))


@torch.no_grad()
def mean_neuron_activation(model, contexts, neurons, interventions=(), batch_size=32) -> float:
    """Mean GLU activation (hook_post) of `neurons` at the " (" step of the contexts (each
    context + " (", last position), under `interventions` (at every position of that pass,
    as on the trigger steps of `run_condition`)."""
    by_layer: dict[int, list[int]] = {}
    for l, i in neurons:
        by_layer.setdefault(int(l), []).append(int(i))
    names = [f"blocks.{l}.mlp.hook_post" for l in by_layer]
    texts = [c + " (" for c in contexts]
    total, n = 0.0, 0
    with model.intervene(*interventions):
        for s in range(0, len(texts), batch_size):
            _, cache = model.run_with_cache(texts[s:s + batch_size], names=names, positions="last",
                                            device="cpu", dtype=torch.float32)
            for l, idx in by_layer.items():
                total += float(cache[f"blocks.{l}.mlp.hook_post"][:, 0, idx].sum())
                n += cache[f"blocks.{l}.mlp.hook_post"].shape[0] * len(idx)
    return total / max(1, n)


def activation_drop(base: float, new: float) -> float:
    """Relative drop of a mean activation: 0 = unchanged, 1 = silenced (how much an
    intervention silences the verification neurons)."""
    return 0.0 if base == 0 else (base - new) / abs(base)
