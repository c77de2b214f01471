"""The closed-form distance correlation (issue 20) against the streamed pair loop.

    python benchmarks/bench_closed_form.py stream [ROUNDS]   # V=50,000, d=1024, cosine, float32
    python benchmarks/bench_closed_form.py qwen              # V=150,000, d_a=2048, d_b=4096: time, memory
    python benchmarks/bench_closed_form.py mantel [PERMS]    # V=50,000, d=1024: seconds per permutation

`stream`: today's default before the closed form (method="stream", backend="blas") once,
then the closed form ROUNDS times, in one process on the same inputs; prints both times,
the ratio and |r_closed - r_stream|, and the closed form on the same rows in float64.
`qwen` runs in a fresh process and reads VmHWM (reset after the inputs are built), so
the peak is what the computation adds beyond the inputs.
Shapes can be changed with VERILENS_BENCH_V / VERILENS_BENCH_D.
"""
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

import torch

from verilens import geometry as G

V = int(os.environ.get("VERILENS_BENCH_V", "50000"))
D = int(os.environ.get("VERILENS_BENCH_D", "1024"))


def make_inputs(V, da, db, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(V, da, generator=g)
    B = 0.5 * A[:, :min(da, db)].repeat(1, -(-db // da))[:, :db] + torch.randn(V, db, generator=g)
    return A, B


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def stream_vs_closed(rounds):
    A, B = make_inputs(V, D, D)
    r_stream, t_stream = timed(lambda: G.distance_correlation(A, B, "cosine", method="stream", backend="blas"))
    closed = [timed(lambda: G.distance_correlation(A, B, "cosine")) for _ in range(rounds)]
    ts = [t for _, t in closed]
    r_closed = closed[0][0]
    r64 = G.distance_correlation(A.double(), B.double(), "cosine")
    print(f"V={V} d={D} cosine float32: stream (blas) {t_stream:.2f} s; closed form median {statistics.median(ts):.3f} s "
          f"(min {min(ts):.3f}, max {max(ts):.3f}, {rounds} rounds); ratio {t_stream / statistics.median(ts):.1f}x; "
          f"|r_closed - r_stream| = {abs(r_closed - r_stream):.2e}; |r_closed(float32) - r_closed(float64)| = "
          f"{abs(r_closed - r64):.2e}; r = {r_closed:.9f}")


_QWEN = textwrap.dedent("""
    import json, sys, time, torch
    sys.path.insert(0, sys.argv[4])
    from bench_closed_form import make_inputs
    from verilens import geometry as G
    V, da, db = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    A, B = make_inputs(V, da, db)
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
    base = status("VmRSS:")
    t = time.perf_counter(); r = G.distance_correlation(A, B, "cosine"); dt = time.perf_counter() - t
    print(json.dumps({"r": r, "seconds": dt, "peak_beyond_inputs_mb": (status("VmHWM:") - base) / 2**20}))
""")


def qwen():
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", _QWEN, "150000", "2048", "4096", here],
                         capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"V=150000 d_a=2048 d_b=4096 cosine float32, closed form: {res['seconds']:.1f} s, "
          f"{res['peak_beyond_inputs_mb']:.0f} MB beyond the inputs, r = {res['r']:.6f}")


def mantel(perms):
    A, B = make_inputs(V, D, D, seed=1)
    _, t1 = timed(lambda: G.distance_correlation(A, B, "cosine"))
    res, t = timed(lambda: G.mantel(A, B, "cosine", permutations=perms))
    per = (t - t1) / perms
    print(f"Mantel V={V} d={D} cosine float32, {perms} permutations: {t:.1f} s (one r: {t1:.2f} s); "
          f"{per:.2f} s per permutation; 999 permutations ~ {(t1 + 999 * per) / 60:.1f} min; p = {res.p_value:.4f}")


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "stream":
        stream_vs_closed(int(sys.argv[2]) if len(sys.argv) > 2 else 3)
    elif what == "qwen":
        qwen()
    elif what == "mantel":
        mantel(int(sys.argv[2]) if len(sys.argv) > 2 else 40)
    else:
        sys.exit(__doc__)
