"""The streaming distance correlation on a GPU (issue 6, part 4): V = 150,000 tokens,
d = 2048 per model. Goal: at least 50 % of the card's measured matmul rate for the
dtype used.

    python -m pytest benchmarks/bench_geometry_gpu.py --benchmark-only -s -q

The floor is `torch.mm` of [8192, d] x [d, 8192] in the same dtype, timed with
`triton.testing.do_bench` in the same run. The kernel's useful work is both models'
Gram tiles over the upper triangle of the token plane: 2 models x 2d FLOPs x V(V+1)/2
pairs (the diagonal tiles are computed whole). Rows: bf16 and fp16 through the kernel
entry point (`pearson_sums_triton`, the inputs already normalised as the library does),
and fp32 through the public `distance_correlation(..., method="stream", backend="triton")` (tf32 dots),
each with its own floor. Skips without CUDA. Override the size with VERILENS_BENCH_GPU_V.
"""
import json
import os

import pytest
import torch

V = int(os.environ.get("VERILENS_BENCH_GPU_V", "150000"))
D = 2048


def _ready():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("needs Triton")


def _do_bench(fn):
    from triton.testing import do_bench

    med, lo, hi = do_bench(fn, warmup=5, rep=50, quantiles=[0.5, 0.2, 0.8])
    return med / 1e3, lo / 1e3, hi / 1e3  # seconds


def _matmul_rate(dtype):
    a = torch.randn(8192, D, device="cuda", dtype=dtype)
    b = torch.randn(D, 8192, device="cuda", dtype=dtype)
    med, _, _ = _do_bench(lambda: a @ b)
    return 2 * 8192 * 8192 * D / med


def _useful_flops():
    return 2 * 2 * D * V * (V + 1) / 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_distance_correlation_gpu(benchmark, dtype):
    _ready()
    from verilens import geometry as G
    from verilens.kernels.distance_correlation import COSINE, pearson_sums_triton

    g = torch.Generator(device="cuda").manual_seed(0)
    A = torch.randn(V, D, device="cuda", generator=g)
    B = torch.randn(V, D, device="cuda", generator=g)
    if dtype == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = True  # the floor in the precision tl.dot uses for fp32
        run = lambda: G.distance_correlation(A, B, method="stream", backend="triton")  # noqa: E731
    else:
        An = (A / A.norm(dim=1, keepdim=True)).to(dtype)
        Bn = (B / B.norm(dim=1, keepdim=True)).to(dtype)
        ones = torch.ones(V, dtype=torch.float64, device="cuda")
        run = lambda: pearson_sums_triton(An, Bn, COSINE, ones, ones)  # noqa: E731
    run()  # compile + pick the tile config
    floor = _matmul_rate(dtype)
    med, lo, hi = _do_bench(run)
    benchmark.pedantic(run, rounds=1, iterations=1)
    rate = _useful_flops() / med
    res = {"device": torch.cuda.get_device_name(), "dtype": str(dtype), "V": V, "d": D, "seconds_median": med,
           "seconds_20_80": [lo, hi], "kernel_tflops": rate / 1e12, "matmul_tflops": floor / 1e12,
           "fraction_of_matmul": rate / floor}
    print("\n" + json.dumps(res))
    benchmark.extra_info.update(res)
