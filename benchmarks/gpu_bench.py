"""What the GPU benchmark scripts share: the readiness check, the command line (`--json`,
`--smoke` for a CPU plumbing check in the Triton interpreter) and the pytest entry.

A script defines `run(args) -> rows`, `environment() -> dict` and `smoke_setup()`, then calls
`main(name, doc, run, environment, smoke_setup, add_args)`; its pytest entry calls
`pytest_entry(benchmark, run, environment)`."""
from __future__ import annotations

import argparse
import json
import os


def cuda_ready() -> str | None:
    """None when a CUDA GPU and Triton are there, else why not."""
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "needs Triton"
    return None


def rel_err(x, ref) -> float:
    """||x - ref|| / ||ref|| in float64."""
    return float((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def bench(fn, smoke: bool, warmup_ms: int = 50, rep_ms: int = 300) -> dict:
    """do_bench's median and 20-80 % quantiles in ms; under --smoke one call, no timing."""
    if smoke:
        fn()
        return {"median_ms": float("nan"), "p20_ms": float("nan"), "p80_ms": float("nan")}
    from triton.testing import do_bench

    med, lo, hi = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return {"median_ms": med, "p20_ms": lo, "p80_ms": hi}


def main(name, doc, run, environment, smoke_setup, add_args=None, argv=None) -> int:
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if add_args:
        add_args(ap)
    ap.add_argument("--json", help="write the rows and the environment to this file")
    ap.add_argument("--smoke", action="store_true", help="CPU plumbing check in the Triton interpreter (no timing)")
    args = ap.parse_args(argv)
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET", "0") in ("0", ""):
            print(f"{name} --smoke: run with TRITON_INTERPRET=1")
            return 2
        smoke_setup()
        run(args)
        print(f"{name} --smoke: every row ran and passed its check (nothing timed)")
        return 0
    why = cuda_ready()
    if why:
        print(f"{name}: skipped ({why}); nothing measured.")
        return 0
    env = environment()
    print(json.dumps(env))
    rows = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=1)
    return 0


def pytest_entry(benchmark, run, environment, args=None):
    """`pytest --benchmark-only`: the whole table once on the GPU (skipped without one)."""
    import pytest

    why = cuda_ready()
    if why:
        pytest.skip(why)
    rows = benchmark.pedantic(run, args=(args,), rounds=1, iterations=1)
    benchmark.extra_info["environment"] = environment()
    benchmark.extra_info["rows"] = rows
