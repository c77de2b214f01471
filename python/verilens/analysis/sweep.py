"""The analysis' sweeps as work units, split across torchrun ranks (verilens.dist).

A unit is exactly a piece of the single-process loop: a batch of problems to generate
traces for, a batch of traces to read verdict activations from, one condition on one
batch of contexts. Batches are cut at the same boundaries whatever the number of ranks,
so every unit pads and computes exactly as in one process, and the numbers gathered are
the numbers of a single-process run (same device, dtype and threads). With one process
the same code runs every unit in order (each batch prefilled once for all its
conditions, as before).

Each rank writes its finished units to DIR/cache/units/STEP/ (RunDir.units), so a run
whose rank died resumes with --resume and recomputes only the missing units."""
from __future__ import annotations

import torch

from . import outcomes


def _batches(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def generate(run, step, model, prompts, max_new_tokens, batch_size, progress=False, format_rules=True) -> list[str]:
    """models.evaluate.generate split by batch of prompts: the greedy continuations."""
    from tqdm.auto import tqdm

    from ..models.evaluate import generate as generate_batch

    batches = _batches(len(prompts), batch_size)

    def compute(keys):
        for k in tqdm(keys, desc=step, disable=not progress):
            b = batches[k]
            yield k, generate_batch(model, [prompts[i] for i in b], max_new_tokens=max_new_tokens,
                                    batch_size=len(b), progress=False, format_rules=format_rules)

    done = run.units(step, len(batches), compute)
    return [g for k in range(len(batches)) for g in done[k]]


def site_activations(run, step, model, traces, sites, batch_size, progress=False) -> torch.Tensor | None:
    """traces.site_activations split by its batches of traces: [n_sites, n_layers, d_model],
    gathered on rank 0 only (None on the others: the probes are trained there)."""
    from tqdm.auto import tqdm

    from .traces import site_activations as read

    by_trace: dict[int, list[int]] = {}
    for j, s in enumerate(sites):
        by_trace.setdefault(s.trace, []).append(j)
    order = list(by_trace)
    chunks = [[j for i in order[b:b + batch_size] for j in by_trace[i]] for b in range(0, len(order), batch_size)]

    def compute(keys):
        for k in tqdm(keys, desc=step, disable=not progress):
            # one batch of exactly the traces the single-process loop puts together
            yield k, read(model, traces, [sites[j] for j in chunks[k]], batch_size=batch_size, progress=False)

    done = run.units(step, len(chunks), compute, main_only=True)
    if done is None:
        return None
    out = torch.empty(len(sites), model.cfg.n_layers, model.cfg.d_model)
    for k, rows in enumerate(chunks):
        out[rows] = done[k]
    return out


def conditions(run, step, model, runs, max_new_tokens, batch_size, neurons=None, stop="text", progress=False):
    """outcomes.run_conditions for several sweeps at once, split by (batch of contexts,
    condition). `runs` {label: (contexts, {condition: [interventions]}, partial, rule, until)}
    (`until`: continue_batch's);
    returns {label: {condition: (table, continuations)}} as run_conditions gives them. A
    rank prefills each of its batches once for all of its conditions on that batch."""
    from tqdm.auto import tqdm

    units = [(lab, b, name) for lab, (ctx, conds, *_) in runs.items() for b in _batches(len(ctx), batch_size)
             for name in conds]

    def compute(keys):
        bar = tqdm(total=len(keys), desc=step, disable=not progress, leave=False)
        groups: dict[tuple, list[int]] = {}  # (label, batch) -> this rank's units on it, in order
        for k in keys:
            lab, b, _ = units[k]
            groups.setdefault((lab, b.start), []).append(k)
        for (lab, start), ks in groups.items():
            ctx, conds, partial, _, until = runs[lab]
            b = units[ks[0]][1]
            wanted = {units[k][2]: conds[units[k][2]] for k in ks}
            res = dict(outcomes.continue_batch(model, [ctx[i] for i in b], wanted, max_new_tokens,
                                               neurons, stop, bar, partial, until))
            for k in ks:
                yield k, res[units[k][2]]
        bar.close()

    done = run.units(step, len(units), compute)
    out = {}
    for lab, (ctx, conds, partial, rule, _) in runs.items():
        table = {}
        for name in conds:
            ks = [k for k, u in enumerate(units) if u[0] == lab and u[2] == name]  # batches in order
            conts = [c for k in ks for c in done[k][0]]
            acts = [a for k in ks for a in done[k][1]]
            table[name] = (outcomes.condition_table(conts, acts if neurons else None, partial, rule), conts)
        out[lab] = table
    return out
