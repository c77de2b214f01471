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

STOPS = ["\n\n"]  # a continuation ends at a blank line (or EOS)

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


def outcome_table(labels) -> dict:
    """Fractions and counts of each outcome."""
    n = max(1, len(labels))
    kinds = ["success", "mix", "fail"] + (["partial"] if "partial" in labels else [])
    return {**{k: labels.count(k) / n for k in kinds}, "counts": {k: labels.count(k) for k in kinds},
            "n": len(labels)}


def run_conditions(model, contexts, conditions, max_new_tokens=100, batch_size=32, partial=False, neurons=None,
                   progress=False):
    """Continue every context greedily under each condition ({name: [interventions]},
    acting on the " (" steps). Returns {name: (outcome table, continuations)}.

    Each batch of contexts is prefilled once (its clean pass) and every condition starts
    from that prefill. With `neurons` [(layer, index), ...], each table also holds
    `neuron_activation`: their mean GLU activation (hook_post) at the first " (" step of
    each continuation (the verdict step), under that condition; continuations that never
    reach a " (" step are left out of it."""
    from tqdm.auto import tqdm

    trigger = iv.at_token(" (")
    paren = trigger.resolve(model).token_id
    by_layer: dict[int, list[int]] = {}
    for l, i in neurons or ():
        by_layer.setdefault(int(l), []).append(int(i))
    names = [f"blocks.{l}.mlp.hook_post" for l in by_layer]
    conts = {name: [] for name in conditions}
    acts = {name: [] for name in conditions}
    starts = range(0, len(contexts), batch_size)
    bar = tqdm(total=len(starts) * len(conditions), disable=not progress, leave=False)
    for s in starts:
        ids, mask = model.tokenize(list(contexts[s:s + batch_size]))
        pre = model.prefill(ids, attention_mask=mask, cache_names=names or None, cache_device="cpu",
                            cache_dtype=torch.float32)
        for name, ivs in conditions.items():
            bar.set_description(name)
            with model.intervene(*ivs, when=trigger):
                out = model.generate(pre, max_new_tokens=max_new_tokens, stop=STOPS)
            gen, cache = out.new_tokens, out.cache
            conts[name] += out.continuation
            if cache is not None:
                # step i is the pass whose last input token is gen[i - 1] (the context's last for i = 0)
                last_in = torch.cat([ids[:, -1:], gen[:, :-1]], 1).cpu()
                for r in range(gen.shape[0]):
                    hits = (last_in[r] == paren).nonzero()
                    if len(hits):
                        i = int(hits[0])
                        acts[name] += [cache[f"blocks.{l}.mlp.hook_post"][r, i, idx] for l, idx in by_layer.items()]
            bar.update()
    bar.close()
    res = {}
    for name in conditions:
        table = outcome_table([classify(c, partial) for c in conts[name]])
        if names:
            table["neuron_activation"] = float(torch.cat(acts[name]).mean()) if acts[name] else None
        res[name] = (table, conts[name])
    return res


def run_condition(model, contexts, interventions=(), max_new_tokens=100, batch_size=32, partial=False,
                  neurons=None, progress=False):
    """One condition of `run_conditions`: (outcome table, continuations)."""
    return run_conditions(model, contexts, {"condition": list(interventions)}, max_new_tokens, batch_size, partial,
                          neurons, progress)["condition"]


def accepted_rate(continuations) -> float:
    """Share of continuations whose first verdict is "this works" (steering of wrong attempts)."""
    return sum(classify(c) == "fail" for c in continuations) / max(1, len(continuations))


def activation_drop(base: float | None, new: float | None) -> float | None:
    """Relative drop of a mean activation: 0 = unchanged, 1 = silenced (how much an
    intervention silences the verification neurons); None when either is unknown."""
    if base is None or new is None:
        return None
    return 0.0 if base == 0 else (base - new) / abs(base)
