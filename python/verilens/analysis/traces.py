"""Step 1 of the analysis (PAPER.md sections 2-3): greedy traces, their verdict tokens,
and the contexts the interventions start from.

A verdict site is the " (" token that opens an attempt's verdict: the model's hidden
state there decides "this" (valid, label 1) or "not" (invalid, label 0). Labels are the
verdicts the model wrote. Only generations with both verdicts are kept for probing."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..countdown import Problem, icl_prompt, parse_trace, prompt
from ..countdown.trace import Attempt, char_to_token
from ..errors import VerilensError


@dataclass
class Trace:
    problem: Problem
    prompt: str
    generation: str

    @property
    def text(self) -> str:
        return self.prompt + self.generation

    @property
    def attempts(self) -> list[Attempt]:
        return parse_trace(self.generation, self.problem.target)

    def to_dict(self) -> dict:
        return {"problem": self.problem.to_dict(), "prompt": self.prompt, "generation": self.generation}

    @classmethod
    def from_dict(cls, d) -> "Trace":
        return cls(Problem(**d["problem"]), d["prompt"], d["generation"])


@dataclass
class Site:
    """One verdict token: trace index, attempt index, token index (in the tokenized
    prompt + generation, without padding) and label (1 = "this", 0 = "not")."""

    trace: int
    attempt: int
    token: int
    label: int


def make_prompt(problem, template: str = "base", shots: int = 3) -> str:
    """`prompt(problem, template)`, or for template "icl" the in-context prompt with
    `shots` solved examples (general reasoning models, not trained on CountDown)."""
    return icl_prompt(problem, shots=shots) if template == "icl" else prompt(problem, template)


def generate_traces(model, problems, template="base", max_new_tokens=400, batch_size=32, progress=True, shots=3):
    """Greedy generations (the model's own chains of thought) for `problems`. With no
    intervention active, HookedModel.generate hands the loop to Hugging Face's own
    generate: the fastest path."""
    from ..models.evaluate import generate

    prompts = [make_prompt(p, template, shots) for p in problems]
    gens = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                    desc="traces")
    return [Trace(p, pr, g) for p, pr, g in zip(problems, prompts, gens)]


def both_verdicts(trace: Trace) -> bool:
    verdicts = {a.verdict for a in trace.attempts}
    return "valid" in verdicts and "invalid" in verdicts


def verdict_sites(model, traces) -> list[Site]:
    """Verdict sites of the traces with both verdicts (the probing data)."""
    sites = []
    for i, t in enumerate(traces):
        if not both_verdicts(t):
            continue
        for k, a in enumerate(t.attempts):
            if a.verdict is None or a.marker is None:
                continue
            tok = char_to_token(model.tokenizer, t.text, len(t.prompt) + a.marker, add_special_tokens=True)
            sites.append(Site(i, k, tok, int(a.verdict == "valid")))
    return sites


def check_sites(sites, traces) -> None:
    """Refuse to go on when the traces cannot support the analysis, saying why."""
    n_both = len({s.trace for s in sites})
    if not sites or n_both < 4:
        n_parsed = sum(bool(t.attempts) for t in traces)
        raise VerilensError(
            f"only {n_both} of {len(traces)} generations have both a valid and an invalid verdict "
            f"({n_parsed} have any parseable attempt); probes need at least 4. "
            "Use more problems (--n), a longer generation, or a model that writes the CountDown format."
        )


@torch.no_grad()
def site_activations(model, traces, sites, batch_size=16, progress=True) -> torch.Tensor:
    """[n_sites, n_layers, d_model] float32 resid_post at every verdict site."""
    from tqdm.auto import tqdm

    L = model.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_post" for l in range(L)]
    by_trace: dict[int, list[int]] = {}
    for j, s in enumerate(sites):
        by_trace.setdefault(s.trace, []).append(j)
    order = list(by_trace)
    out = torch.empty(len(sites), L, model.cfg.d_model)
    for b in tqdm(range(0, len(order), batch_size), desc="activations", disable=not progress):
        chunk = order[b:b + batch_size]
        texts = [traces[i].text for i in chunk]
        ids, mask = model.tokenize(texts)
        pad = (mask == 0).sum(1)
        k = max(len(by_trace[i]) for i in chunk)
        pos = torch.zeros(len(chunk), k, dtype=torch.long)
        for r, i in enumerate(chunk):
            p = [int(pad[r]) + sites[j].token for j in by_trace[i]]
            pos[r] = torch.tensor(p + [p[-1]] * (k - len(p)))  # repeat to a common length
        _, cache = model.run_with_cache(texts, names_filter=names, positions=pos, device="cpu", dtype=torch.float32)
        acts = torch.stack([cache[n] for n in names], 2)  # [b, k, L, d]
        for r, i in enumerate(chunk):
            for c, j in enumerate(by_trace[i]):
                out[j] = acts[r, c]
    return out


def correct_contexts(traces, limit=None) -> list[tuple[str, int]]:
    """(context, target): prompt + generation cut right before the " (" of each attempt the
    model accepted and whose claimed value is the target, one per trace (its first)."""
    out = []
    for t in traces:
        for a in t.attempts:
            if a.verdict == "valid" and a.hits_target and a.marker is not None:
                out.append((t.text[: len(t.prompt) + a.marker], t.problem.target))
                break
    return out[:limit]


def wrong_contexts(traces, limit=None) -> list[tuple[str, int]]:
    """(context, target) cut right before the " (" of each attempt the model rejected and
    whose claimed value misses the target, one per trace (its first)."""
    out = []
    for t in traces:
        for a in t.attempts:
            if a.verdict == "invalid" and not a.hits_target and a.marker is not None:
                out.append((t.text[: len(t.prompt) + a.marker], t.problem.target))
                break
    return out[:limit]
