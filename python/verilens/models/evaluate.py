"""`verilens eval`: how well a model solves CountDown and verifies its own attempts.

Greedy generations on problems of the "test" split (never seen by countdown-tiny in
training), decoded under the format's rules (countdown.decoding: a verdict ends its line,
an attempt is not written twice), parsed into attempts. Metrics:
- parse_rate: generations with >= 1 attempt, a verdict and a claimed value on every
  attempt, and an <answer> on the last line;
- verdict_agreement: attempts whose verdict ("this works" / "not") matches whether the
  claimed value equals the target, also broken down by attempt position (1 = first),
  so a positional shortcut would show;
- arithmetic_accuracy: attempts whose every "=" segment equals the expression's value;
- solve_rate: generations with reward 1.0; mean_reward: TinyZero's reward;
- forced_verdicts: the verdict the model gives, teacher forced, on synthetic traces of
  the same problems whose claimed values are sometimes wrong on purpose (a wrong
  computation that claims the target, near misses). Greedy agreement alone cannot tell a
  model that compares its claim with the target from one whose verdict follows what it
  meant to write; on wrong claims only the comparison gets the verdict right."""
from __future__ import annotations

from collections import defaultdict

import torch

from ..countdown import generate_problems, parse_trace, prompt, reward
from ..countdown.decoding import FormatRules
from ..countdown.reward import extract_solution
from ..countdown.synth import trace_and_slips


def generate(model, prompts, max_new_tokens=400, batch_size=50, progress=True, desc="generate",
             format_rules=True):
    """Greedy continuations of `prompts` by a HookedModel, `batch_size` at a time (each
    batch one `model.generate` call: Hugging Face's own loop when no intervention is
    active); returns the new text of each. `format_rules`: decode under the format's
    rules, a verdict ends its line and an attempt is not written twice (countdown.decoding;
    off only to reproduce code that decodes without them, as --paper-settings does)."""
    from tqdm.auto import tqdm

    rules = FormatRules(model.tokenizer) if format_rules else None
    outs = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress):
        outs += model.generate(list(prompts[i:i + batch_size]), max_new_tokens=max_new_tokens,
                               logits_processor=rules).continuation
    return outs


def score_generations(problems, generations, template="base") -> dict:
    """The eval metrics of `generations` (responses to `prompt(problem, template)`)."""
    parsed = 0
    n_att = agree = arith = 0
    by_pos = defaultdict(lambda: [0, 0])
    rewards, n_valid, n_invalid, both = [], 0, 0, 0
    failed_before = []
    for p, g in zip(problems, generations):
        atts = parse_trace(g, p.target)
        full = prompt(p, template) + g
        r = reward(full, p.nums, p.target)
        rewards.append(r)
        if atts and all(a.verdict is not None and a.claimed is not None for a in atts) \
                and extract_solution(full) is not None:
            parsed += 1
        verdicts = [a.verdict for a in atts]
        if "valid" in verdicts and "invalid" in verdicts:
            both += 1
        if "valid" in verdicts:
            failed_before.append(verdicts.index("valid"))
        for k, a in enumerate(atts, 1):
            n_att += 1
            arith += a.arithmetic_ok
            n_valid += a.verdict == "valid"
            n_invalid += a.verdict == "invalid"
            ok = a.verdict is not None and (a.verdict == "valid") == a.hits_target
            agree += ok
            by_pos[k][0] += ok
            by_pos[k][1] += 1
    n = max(1, len(generations))
    return {
        "n": len(generations),
        "parse_rate": parsed / n,
        "verdict_agreement": agree / max(1, n_att),
        "arithmetic_accuracy": arith / max(1, n_att),
        "solve_rate": sum(r == 1.0 for r in rewards) / n,
        "mean_reward": sum(rewards) / n,
        "n_attempts": n_att,
        "n_valid_verdicts": n_valid,
        "n_invalid_verdicts": n_invalid,
        "both_verdicts_rate": both / n,
        "mean_failed_before_valid": sum(failed_before) / max(1, len(failed_before)),
        "verdict_agreement_by_position": {
            str(k): {"agreement": v[0] / v[1], "attempts": v[1]} for k, v in sorted(by_pos.items())
        },
    }


@torch.no_grad()
def forced_verdicts(model, tokenizer, problems, seed=0, template="base", p_slip=0.5, p_final_slip=0.3) -> dict:
    """Teacher-forced verdict accuracy ("this" vs "not" after each attempt's " (") on
    synthetic traces of `problems`, by kind of claimed value: `target_claims_wrong`
    (a wrong computation that claims the target: the verdict must be "this works"),
    `other_claims_wrong` (a wrong value that misses the target: "not"), `honest` (the
    claimed value is the expression's value). Counts beside each accuracy."""
    import random

    rng = random.Random(seed)
    this, not_ = (tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t))[0] for t in ("this", "not"))
    device = next(model.parameters()).device
    ok, seen = defaultdict(int), defaultdict(int)
    for p in problems:
        head = prompt(p, template)
        text, _ = trace_and_slips(p, rng, p_slip=p_slip, p_final_slip=p_final_slip)
        enc = tokenizer(head + text, return_offsets_mapping=True, add_special_tokens=False)
        logits = model(input_ids=torch.tensor([enc["input_ids"]], device=device)).logits[0]
        token_at = {start: i for i, (start, _) in enumerate(enc["offset_mapping"])}
        for a in parse_trace(text, p.target):
            i = token_at.get(len(head) + a.marker)  # the " (" token; its logits give the verdict
            if i is None:
                continue
            kind = "honest" if a.claimed == a.value else ("target_claims_wrong" if a.hits_target else "other_claims_wrong")
            seen[kind] += 1
            ok[kind] += bool(logits[i, this] > logits[i, not_]) == a.hits_target
    return {k: {"accuracy": ok[k] / seen[k] if seen[k] else None, "attempts": seen[k]}
            for k in ("target_claims_wrong", "other_claims_wrong", "honest")}


def evaluate(loaded, n=500, seed=0, template="base", max_new_tokens=400, batch_size=50, progress=True,
             return_generations=False):
    """Generate on `n` test-split problems and score them (see module doc)."""
    problems = generate_problems(n, seed=seed, split="test")
    gens = generate(loaded, [prompt(p, template) for p in problems], max_new_tokens=max_new_tokens,
                    batch_size=batch_size, progress=progress)
    metrics = {"model": loaded.name, "seed": seed, "template": template, **score_generations(problems, gens, template)}
    metrics["forced_verdicts"] = forced_verdicts(loaded.hf_model, loaded.tokenizer, problems, seed, template)
    if return_generations:
        return metrics, problems, gens
    return metrics
