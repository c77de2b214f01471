"""The analysis' traces step: HookedModel.generate (no intervention active, so it hands the
loop to Hugging Face's generate) against the plain Hugging Face call the step made before
it went through HookedModel (issue 18, part 3).

countdown-tiny fp32 on CPU, the demo's trace settings: one batch of 50 prompts, greedy,
300 new tokens. Both sides must produce the same tokens (checked before timing).

Run:  python benchmarks/bench_traces.py paired [ROUNDS]     (pairs alternate the order)
"""
import os
import statistics
import sys
import time

import torch

import verilens
from verilens.analysis.traces import make_prompt
from verilens.countdown import generate_problems

BATCH, NEW = 50, 300


@torch.no_grad()
def plain_hf(m, prompts):
    """What the traces step called before: tokenizer padding + hf_model.generate."""
    tok = m.tokenizer
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = m.hf_model.generate(**enc, max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def hooked(m, prompts):
    return m.generate(prompts, max_new_tokens=NEW).continuation


def paired(rounds: int):
    torch.set_num_threads(os.cpu_count() or 1)
    m = verilens.load("countdown-tiny")
    prompts = [make_prompt(p) for p in generate_problems(BATCH, seed=0)]
    assert plain_hf(m, prompts) == hooked(m, prompts), "the two paths must give the same traces"
    tb, to = [], []
    for r in range(rounds):
        for fn, times in ((plain_hf, tb), (hooked, to)) if r % 2 == 0 else ((hooked, to), (plain_hf, tb)):
            t0 = time.perf_counter()
            fn(m, prompts)
            times.append(time.perf_counter() - t0)
    ratios = sorted(o / b for o, b in zip(to, tb))
    q = statistics.quantiles(ratios, n=4) if rounds > 1 else (ratios[0], ratios[0], ratios[0])
    print(f"traces batch {BATCH} x {NEW} tokens: plain HF median {statistics.median(tb):.3f} s, "
          f"HookedModel.generate {statistics.median(to):.3f} s; per-pair ratio median {statistics.median(ratios):.3f} "
          f"(quartiles {q[0]:.3f}-{q[2]:.3f}, {rounds} pairs)")


if __name__ == "__main__":
    if sys.argv[1:2] != ["paired"]:
        sys.exit(__doc__)
    paired(int(sys.argv[2]) if len(sys.argv) > 2 else 7)
