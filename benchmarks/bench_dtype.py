"""countdown-smol's forward in float32 vs bfloat16 on this machine (issue 22: why it loads in
bfloat16 by default). One batch of 32 sequences of 200 tokens (an intervention batch's
second-cache build, the analysis' largest single cost): `model.prefill`, the clean pass with
its KV cache and the last position's logits; the two dtypes alternate by round. Reported:
each arm's time per round, the median ratio (float32 / bfloat16) and its range.

Run:  python benchmarks/bench_dtype.py [ROUNDS]
"""
import statistics
import sys
import time

import torch

import verilens


def main(rounds: int):
    ids = torch.randint(100, 40000, (32, 200), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    models = {dt: verilens.load("countdown-smol", dtype=dt) for dt in ("float32", "bfloat16")}
    times = {dt: [] for dt in models}
    with torch.no_grad():
        for m in models.values():  # warm up
            m.prefill(ids, attention_mask=mask)
        for r in range(rounds):
            for dt in (list(models) if r % 2 == 0 else list(models)[::-1]):
                t0 = time.perf_counter()
                models[dt].prefill(ids, attention_mask=mask)
                times[dt].append(time.perf_counter() - t0)
            print(f"round {r + 1}: float32 {times['float32'][-1]:.2f} s, bfloat16 {times['bfloat16'][-1]:.2f} s",
                  flush=True)
    ratios = sorted(a / b for a, b in zip(times["float32"], times["bfloat16"]))
    print(f"float32 median {statistics.median(times['float32']):.2f} s, bfloat16 "
          f"{statistics.median(times['bfloat16']):.2f} s; ratio {statistics.median(ratios):.2f} "
          f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}, {rounds} rounds, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
