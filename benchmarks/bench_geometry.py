"""Benchmarks of the streaming distance correlation (issue 6, part 4).

    pytest benchmarks/bench_geometry.py --benchmark-enable -s

- stream_*: distance_correlation over V x V pairs (V = VERILENS_BENCH_V, default 50,000;
  d = VERILENS_BENCH_D, default 1024; float32 random data) with each CPU backend, and
  the compute floor measured in the same run: the two models' Gram matrices computed
  tile by tile with BLAS over the same upper-triangle tile schedule, no reduction.
  Goal: blas (the default) <= 1.5x the floor.
- peak memory beyond the inputs (separate processes, VmHWM reset after the inputs are
  built): goal <= 256 MB at V = 50,000.
- scipy_vs_stream at V = 10,000: pdist + pearsonr (materialises both matrices) vs ours,
  time and peak memory.
- mantel: cost per permutation vs one correlation pass.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from verilens import geometry as G

V = int(os.environ.get("VERILENS_BENCH_V", "50000"))
D = int(os.environ.get("VERILENS_BENCH_D", "1024"))
V_SCIPY = int(os.environ.get("VERILENS_BENCH_V_SCIPY", "10000"))
ROUNDS = int(os.environ.get("VERILENS_BENCH_ROUNDS", "3"))


def make_inputs(V, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(V, d, generator=g)
    B = 0.5 * A + torch.randn(V, d, generator=g)
    return A, B


@pytest.fixture(scope="module")
def big():
    return make_inputs(V, D)


def gram_floor(A, B, tile=2048):
    """The compute floor: both Gram matrices tile by tile (upper triangle), nothing else."""
    n = A.shape[0]
    buf_a = torch.empty(tile, tile)
    buf_b = torch.empty(tile, tile)
    starts = range(0, n, tile)
    for i0 in starts:
        Ai, Bi = A[i0:i0 + tile], B[i0:i0 + tile]
        for j0 in range(i0, n, tile):
            Aj, Bj = A[j0:j0 + tile], B[j0:j0 + tile]
            torch.mm(Ai, Aj.T, out=buf_a[:Ai.shape[0], :Aj.shape[0]])
            torch.mm(Bi, Bj.T, out=buf_b[:Bi.shape[0], :Bj.shape[0]])


@pytest.mark.benchmark(group="stream-V50k")
def test_floor_gram_tiles(benchmark, big):
    benchmark.pedantic(gram_floor, args=big, rounds=ROUNDS, iterations=1, warmup_rounds=0)


@pytest.mark.benchmark(group="stream-V50k")
@pytest.mark.parametrize("backend", ["blas", "core"])
def test_stream(benchmark, big, backend):
    r = benchmark.pedantic(lambda: G.distance_correlation(*big, "cosine", method="stream", backend=backend),
                           rounds=ROUNDS, iterations=1, warmup_rounds=0)
    benchmark.extra_info["r"] = r


@pytest.mark.benchmark(group="stream-V50k")
def test_stream_torch_reduction(benchmark, big):
    """Pure torch (BLAS tiles + float64 torch reduction): one round, it is slow."""
    benchmark.pedantic(lambda: G.distance_correlation(*big, "cosine", method="stream", backend="torch"),
                       rounds=1, iterations=1, warmup_rounds=0)


# ------------------------------------------------------------------ peak memory
_MEM_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np, torch
    V, d, what = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    g = torch.Generator().manual_seed(0)
    A = torch.randn(V, d, generator=g); B = 0.5 * A + torch.randn(V, d, generator=g)
    if what == "scipy":
        A, B = A.numpy(), B.numpy()
        from scipy.spatial.distance import pdist
        from scipy.stats import pearsonr
        fn = lambda: pearsonr(pdist(A, "cosine"), pdist(B, "cosine")).statistic
    else:
        from verilens import geometry as G
        fn = lambda: G.distance_correlation(A, B, "cosine", method="stream", backend=what)
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to now
    base = status("VmRSS:")
    t = time.perf_counter(); r = fn(); dt = time.perf_counter() - t
    print(json.dumps({"r": float(r), "seconds": dt, "peak_beyond_inputs_mb": (status("VmHWM:") - base) / 2**20}))
""")


def measure_peak(V, d, what):
    out = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(V), str(d), what],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.benchmark(group="memory")
@pytest.mark.parametrize("backend", ["blas", "core"])
def test_peak_memory_stream(benchmark, backend):
    res = benchmark.pedantic(measure_peak, args=(V, D, backend), rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    print(f"\n{backend} V={V} d={D}: {res}")


@pytest.mark.benchmark(group="scipy-V10k")
@pytest.mark.parametrize("what", ["scipy", "blas"])
def test_scipy_vs_stream(benchmark, what):
    res = benchmark.pedantic(measure_peak, args=(V_SCIPY, D, what), rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    print(f"\n{what} V={V_SCIPY} d={D}: {res}")


# ------------------------------------------------------------------ Mantel
V_MANTEL = int(os.environ.get("VERILENS_BENCH_V_MANTEL", "10000"))


@pytest.fixture(scope="module")
def mid():
    return make_inputs(V_MANTEL, D, seed=1)


@pytest.mark.benchmark(group="mantel-V10k")
def test_mantel_one_pass(benchmark, mid):
    benchmark.pedantic(lambda: G.distance_correlation(*mid), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="mantel-V10k")
def test_mantel_8_permutations(benchmark, mid):
    """Observed r plus 8 permutations (one sweep, batch=9): per-permutation cost =
    (time - one pass) / 8."""
    benchmark.pedantic(lambda: G.mantel(*mid, permutations=8, batch=9), rounds=ROUNDS, iterations=1)
