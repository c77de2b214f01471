"""The cost of the format rules (countdown.decoding.FormatRules) in greedy generation (issue 22).

countdown-tiny (the model whose steps are cheapest, so the rule's per-step Python weighs most)
generates 100 test-split prompts, 400 new tokens, batch 50, with and without the rule, in
alternating order per round. Reported: the time of each arm per round, the median ratio
(with rule / without) and its range.

Run:  python benchmarks/bench_decoding.py [ROUNDS]
"""
import statistics
import sys
import time

import verilens
from verilens.countdown import generate_problems, prompt
from verilens.models.evaluate import generate


def main(rounds: int):
    m = verilens.load("countdown-tiny")
    prompts = [prompt(p) for p in generate_problems(100, seed=0, split="test")]
    generate(m, prompts[:50], max_new_tokens=20, progress=False)  # warm up
    times = {True: [], False: []}
    for r in range(rounds):
        for rule in ((True, False) if r % 2 == 0 else (False, True)):
            t0 = time.perf_counter()
            generate(m, prompts, progress=False, format_rules=rule)
            times[rule].append(time.perf_counter() - t0)
        print(f"round {r + 1}: with the rule {times[True][-1]:.2f} s, without {times[False][-1]:.2f} s", flush=True)
    ratios = sorted(a / b for a, b in zip(times[True], times[False]))
    print(f"with the rule median {statistics.median(times[True]):.2f} s, without {statistics.median(times[False]):.2f} s;"
          f" ratio {statistics.median(ratios):.3f} (range {ratios[0]:.3f}-{ratios[-1]:.3f}, {rounds} rounds)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
