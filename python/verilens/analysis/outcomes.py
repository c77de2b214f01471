"""Interventions with the paper's protocol, and how their outcomes are scored (PAPER.md section 6).

Contexts are attempts cut right before their " (". Greedy decoding, up to 100 new
tokens, stops at EOS or a blank line, or once what is measured is decided (DECIDED,
VERDICTS). Interventions act only on decoding steps whose last input token is " (" (the
step that predicts "this" / "not").

Outcomes of a continuation:
- fail: the model still verifies: its first verdict is "this works";
- success: verification disabled: it says "not" and the rest is only numbers,
  operators, parentheses and more "not"s (it rejects its correct answer and moves on);
- mix: "not" plus a give-away ("<answer>", "so the answer is", "equals", "Wait",
  "That works"), or no verdict at all;
- partial (general reasoning models, `partial=True`): it rejects ("not") and then
  corrects itself ("Wait", "That works", "this works").

`classify_authors` is the rule of the authors' released code, which `--paper-settings`
reports first; every table holds both (`by_rule`). Why verilens' rule stays the default:
its "success" is exact (the continuation is a rejection and nothing but more arithmetic),
case-insensitive and ordered (the first verdict decides), so the success rate it reports
is a lower bound on "verification disabled". The authors' rule makes "success" the
catch-all for any continuation holding the substring "not" ("nothing", "cannot" too) that
has no "<answer>" / "this works" / "correct": "(not 64 - this is actually 64)\nSo, the
equation that equals 64 is ..." is a success for it, and whether a give-away counts depends
on where the 30 tokens end ("<answer" cut before ">" does not). Its "mix" holds only
continuations made of a dozen listed words, so one extra word ("Therefore") turns a mix
into a success. verilens' rule in turn calls "(not 48, but close, let's try another
combination)" a mix, which undercounts; the two side by side bracket the rate."""
from __future__ import annotations

import re

import torch

from ..hooks import interventions as iv

STOPS = ["\n\n"]  # a continuation ends at a blank line (or EOS)
# A continuation that says "this works" is a fail under both rules (unless `partial`), whatever
# follows: with the "text" stop, generation ends there, which leaves every outcome as it was
# and spares the tokens after it (most continuations of most conditions; their examples end
# at the verdict).
DECIDED = "this works"
# The first verdict ("this works" or "not") decides whether a wrong attempt is accepted
# (`accepts`): steering's continuations end there.
VERDICTS = ["this works", "not"]
RULES = ("verilens", "authors")

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


# The authors' rule (mech_interp.sync.py run(), lines 353-415; for general reasoning
# models postprocess_qwen_gens.py, lines 27-99): words are found by one regex, digits
# never count, and every test is case-sensitive, as theirs.
_AUTHORS_WORDS = re.compile(r"\d+|<\w+>|[A-Za-z_]+|[()+\-*/=]")
_AUTHORS_CLEAN = frozenset({"+", "-", "*", "/", "=", "(", ")", "not"})
_AUTHORS_EXTRAS = frozenset({"so", "the", "answer", "is", "<answer>", "</answer>", "</think>", "So", "equation",
                             "that", "equals", "think"})  # "</answer>" and "</think>" never match their regex


def classify_authors(continuation: str, partial: bool = False) -> str:
    """The authors' outcome of a continuation, exactly as their code decides it:
    "success" | "mix" | "fail" | "unknown" (no class: it counts in the total only).

    With `partial` (general reasoning models) the rule of their postprocess_qwen_gens.py:
    "this works" is no longer checked first, a rejection followed by "Wait" or "That works"
    is a give-away too, a rejection with other words and no give-away is "unknown" (not
    "success"), and their "mix" counter, which they print as "Partial", is "partial"."""
    text = continuation
    words = {w for w in _AUTHORS_WORDS.findall(text) if not w[0].isdigit()}
    mix = "partial" if partial else "mix"
    if not partial and "this works" in text:
        return "fail"
    if words <= _AUTHORS_CLEAN:
        return "success"  # also the empty continuation, and one of numbers only
    if words <= _AUTHORS_CLEAN | _AUTHORS_EXTRAS:
        return mix
    if "not" in text and "correct" in text:
        return "success" if "not correct" in text else mix
    give_aways = ("this works", "<answer>", "Wait", "That works") if partial else ("<answer>",)
    if "not" in text and any(g in text for g in give_aways):
        return mix
    if partial:
        return "fail" if "this works" in text else "unknown"
    return "success" if "not" in text else "unknown"


def label(continuation: str, rule: str = "verilens", partial: bool = False) -> str:
    """The outcome of a continuation under `rule` ("verilens" or "authors")."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    return classify_authors(continuation, partial) if rule == "authors" else classify(continuation, partial)


def outcome_table(labels) -> dict:
    """Fractions and counts of each outcome (fractions of all continuations, "unknown"
    included, as the authors' rates are)."""
    n = max(1, len(labels))
    kinds = ["success", "mix", "fail"] + [k for k in ("partial", "unknown") if k in labels]
    return {**{k: labels.count(k) / n for k in kinds}, "counts": {k: labels.count(k) for k in kinds},
            "n": len(labels)}


def authors_stop_ids(tokenizer) -> dict:
    """The token ids the authors' generation loop stops at (mech_interp.sync.py
    generate_hooked(), lines 148-151 and 204-218): the FIRST token of the encodings of
    "\n", "\n\n" and ">\n\n" (without special tokens), and EOS."""
    def first(s):
        return tokenizer.encode(s, add_special_tokens=False)[0]

    return {"eos": tokenizer.eos_token_id, "newline": first("\n"), "blank": first("\n\n"), "bracket": first(">\n\n")}


def authors_stop(new_tokens, last_context_token: int, stop_ids: dict) -> int:
    """How many generated tokens the authors' loop keeps: it ends at the first token that
    is EOS, "\n\n" or ">\n\n" (by their ids), or "\n" right after "\n", and writes EOS
    in its place (so the stop token itself is not in their continuation)."""
    prev = last_context_token
    for t, tok in enumerate(new_tokens):
        if tok in (stop_ids["eos"], stop_ids["blank"], stop_ids["bracket"]) or \
                (prev == stop_ids["newline"] and tok == stop_ids["newline"]):
            return t
        prev = tok
    return len(new_tokens)


def run_conditions(model, contexts, conditions, max_new_tokens=100, batch_size=32, partial=False, neurons=None,
                   progress=False, rule="verilens", stop="text"):
    """Continue every context greedily under each condition ({name: [interventions]},
    acting on the " (" steps). Returns {name: (outcome table, continuations)}.

    Each batch of contexts is prefilled once (its clean pass) and every condition starts
    from that prefill. With `neurons` [(layer, index), ...], each table also holds
    `neuron_activation`: their mean GLU activation (hook_post) at the first " (" step of
    each continuation (the verdict step), under that condition; continuations that never
    reach a " (" step are left out of it.

    Each table's outcomes are by `rule` ("verilens" or "authors", `label`); `by_rule`
    holds the tables of both rules. `stop`: "text" ends a continuation at a blank line in
    the text (STOPS) or EOS; "authors" at the authors' stop tokens (`authors_stop`): the
    continuation runs to EOS and is cut where their loop would have stopped, which by
    greedy decoding is the same text."""
    if stop not in ("text", "authors"):
        raise ValueError(f"stop must be 'text' or 'authors', not {stop!r}")
    from tqdm.auto import tqdm

    conts = {name: [] for name in conditions}
    acts = {name: [] for name in conditions}
    starts = range(0, len(contexts), batch_size)
    bar = tqdm(total=len(starts) * len(conditions), disable=not progress, leave=False)
    for s in starts:
        for name, (c, a) in continue_batch(model, contexts[s:s + batch_size], conditions, max_new_tokens, neurons,
                                           stop, bar, partial):
            conts[name] += c
            acts[name] += a
    bar.close()
    return {name: (condition_table(conts[name], acts[name] if neurons else None, partial, rule), conts[name])
            for name in conditions}


def continue_batch(model, contexts, conditions, max_new_tokens=100, neurons=None, stop="text", bar=None,
                   partial=False, until="outcome"):
    """The work of `run_conditions` on one batch of contexts: the batch is prefilled once
    (its clean pass) and every condition starts from that prefill. With the "text" stop, a
    continuation also ends once what is measured of it is decided: `until` "outcome", at
    DECIDED (not with `partial`, where a correction may follow); "verdict" (steering's
    `accepted_rate`), at its first verdict (VERDICTS). Yields (name,
    (continuations, neuron activations)) condition by condition, in the order given; the
    activations are floats (each context that reaches a " (" step gives one per neuron).
    A batch's numbers depend only on its contexts (padding is per batch), so a sweep split
    into batches gives the numbers of the whole run."""
    trigger = iv.at_token(" (")
    paren = trigger.resolve(model).token_id
    by_layer: dict[int, list[int]] = {}
    for l, i in neurons or ():
        by_layer.setdefault(int(l), []).append(int(i))
    names = [f"blocks.{l}.mlp.hook_post" for l in by_layer]
    stop_ids = authors_stop_ids(model.tokenizer) if stop == "authors" else None
    if until not in ("outcome", "verdict"):
        raise ValueError(f"until must be 'outcome' or 'verdict', not {until!r}")
    decided = VERDICTS if until == "verdict" else [] if partial else [DECIDED]
    # the authors' stop keeps their loop's continuations token for token (--paper-settings)
    stops = STOPS + decided if stop == "text" else None
    ids, mask = model.tokenize(list(contexts))
    pre = model.prefill(ids, attention_mask=mask, cache_names=names or None, cache_device="cpu",
                        cache_dtype=torch.float32)
    for name, ivs in conditions.items():
        if bar is not None:
            bar.set_description(name)
        with model.intervene(*ivs, when=trigger):
            out = model.generate(pre, max_new_tokens=max_new_tokens, stop=stops)
        gen, cache = out.new_tokens, out.cache
        if stop == "text":
            kept = [gen.shape[1]] * gen.shape[0]
            conts = list(out.continuation)
        else:
            rows = gen.cpu().tolist()
            kept = [authors_stop(row, int(ids[r, -1]), stop_ids) for r, row in enumerate(rows)]
            conts = [model.tokenizer.decode(row[:k], skip_special_tokens=True) for row, k in zip(rows, kept)]
        acts = []
        if cache is not None:
            # step i is the pass whose last input token is gen[i - 1] (the context's last for i = 0)
            last_in = torch.cat([ids[:, -1:], gen[:, :-1]], 1).cpu()
            for r in range(gen.shape[0]):
                hits = (last_in[r, : kept[r] + 1] == paren).nonzero()  # steps the run made
                if len(hits):
                    i = int(hits[0])
                    for l, idx in by_layer.items():
                        acts += cache[f"blocks.{l}.mlp.hook_post"][r, i, idx].tolist()
        if bar is not None:
            bar.update()
        yield name, (conts, acts)


def condition_table(continuations, activations=None, partial=False, rule="verilens") -> dict:
    """The outcome table of one condition from its continuations (and, when neurons were
    watched, the list of their activations at the verdict step: `neuron_activation` is
    their float32 mean, None when empty)."""
    by_rule = {r: outcome_table([label(c, r, partial) for c in continuations]) for r in RULES}
    table = {**by_rule[rule], "rule": rule, "by_rule": by_rule}
    if activations is not None:
        table["neuron_activation"] = float(torch.tensor(activations, dtype=torch.float32).mean()) \
            if activations else None
    return table


def run_condition(model, contexts, interventions=(), max_new_tokens=100, batch_size=32, partial=False,
                  neurons=None, progress=False, rule="verilens", stop="text"):
    """One condition of `run_conditions`: (outcome table, continuations)."""
    return run_conditions(model, contexts, {"condition": list(interventions)}, max_new_tokens, batch_size, partial,
                          neurons, progress, rule, stop)["condition"]


def accepts(continuation: str) -> bool:
    """Whether the first verdict of a continuation is "this works" (before any "not";
    case-insensitive): the attempt it continues is accepted, whatever comes after."""
    text = continuation.lower()
    i_not, i_works = text.find("not"), text.find("this works")
    return i_works >= 0 and (i_not < 0 or i_works < i_not)


def accepted_rate(continuations, rule="verilens") -> float:
    """Share of continuations that accept the attempt they continue, for steering of wrong
    attempts: under verilens' rule its first verdict is "this works" (`accepts`: a later
    attempt accepted after "not" does not count); under the authors' rule the outcome is
    their "fail" ("this works" anywhere)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    hits = [accepts(c) if rule == "verilens" else classify_authors(c) == "fail" for c in continuations]
    return sum(hits) / max(1, len(hits))


def activation_drop(base: float | None, new: float | None) -> float | None:
    """Relative drop of a mean activation: 0 = unchanged, 1 = silenced (how much an
    intervention silences the verification neurons); None when either is unknown."""
    if base is None or new is None:
        return None
    return 0.0 if base == 0 else (base - new) / abs(base)
