"""The interventions step of `verilens demo` (issue 5, section 5: the demo in <= 5 minutes).

countdown-tiny on CPU: 50 contexts cut before the " (" of a correct attempt, 40 greedy
tokens, the demo's batch of 50; conditions none + 8 random 3-head sets (heads ablated at
every position of the " (" passes, PAPER.md section 6), plus the verification neurons'
mean activation at the " (" step under each condition.

- shared: `outcomes.run_conditions`: one clean prefill of the contexts for all conditions,
  a second KV cache per head condition, the activation read during generation;
- per_condition (the baseline, the pipeline before 2026-12-01): each condition generates
  from the text and recomputes the firing rows over the whole sequence at each firing,
  then one more forward of context + " (" for the activation.

    python -m pytest benchmarks/bench_interventions.py --benchmark-only -q -p no:cacheprovider
"""
import random

import pytest
import torch

import verilens
import verilens.hooks.generate as gen
from verilens.analysis import outcomes
from verilens.analysis.traces import correct_contexts, generate_traces
from verilens.countdown import generate_problems
from verilens.hooks import interventions as iv

N_CONTEXTS, TOKENS, BATCH, N_SETS = 50, 40, 50, 8
NEURONS = [(3, 5), (4, 7), (2, 100), (5, 300)]


@pytest.fixture(scope="module")
def setup():
    model = verilens.load("countdown-tiny")
    traces = generate_traces(model, generate_problems(80, seed=0, split="test"), max_new_tokens=300,
                             batch_size=BATCH, progress=False)
    contexts = [c for c, _ in correct_contexts(traces, N_CONTEXTS)]
    rng = random.Random(0)
    heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    conditions = {"none": [], **{f"random_{k}": [iv.ablate_heads(rng.sample(heads, 3))] for k in range(N_SETS)}}
    return model, contexts, conditions


def shared(model, contexts, conditions):
    runs = outcomes.run_conditions(model, contexts, conditions, TOKENS, BATCH, neurons=NEURONS)
    return {k: (t["counts"], t["neuron_activation"]) for k, (t, _) in runs.items()}


def per_condition(model, contexts, conditions):
    old, gen.SECOND_CACHE_SHARE = gen.SECOND_CACHE_SHARE, float("inf")  # recompute at every firing
    try:
        out = {}
        names = sorted({f"blocks.{l}.mlp.hook_post" for l, _ in NEURONS})
        for name, ivs in conditions.items():
            with model.intervene(*ivs, when=iv.at_token(" (")):
                conts = model.generate(contexts, max_new_tokens=TOKENS, stop=["\n\n"]).continuation
            labels = [outcomes.classify(c) for c in conts]
            with model.intervene(*ivs):
                _, cache = model.run_with_cache([c + " (" for c in contexts], names_filter=names, positions="last")
            act = torch.stack([cache[f"blocks.{l}.mlp.hook_post"][:, 0, i] for l, i in NEURONS]).mean()
            out[name] = (outcomes.outcome_table(labels)["counts"], float(act))
        return out
    finally:
        gen.SECOND_CACHE_SHARE = old


@pytest.mark.parametrize("way", ["shared", "per_condition"])
def test_interventions_step(benchmark, setup, way):
    model, contexts, conditions = setup
    fn = {"shared": shared, "per_condition": per_condition}[way]
    if way == "shared":  # both ways do the same work: same outcomes, same activations
        a, b = shared(model, contexts, conditions), per_condition(model, contexts, conditions)
        for k in conditions:
            assert a[k][0] == b[k][0] and abs(a[k][1] - b[k][1]) < 1e-4, k
    benchmark.group = f"interventions step: {len(contexts)} contexts x {TOKENS} tokens, none + {N_SETS} head sets"
    benchmark.pedantic(fn, args=(model, contexts, conditions), rounds=3, iterations=1)
