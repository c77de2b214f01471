"""GPU benchmark of the full composition matrix (issue 5, section 5): every GLU neuron of
every layer against every attention head of the layers before it, at Qwen2.5-3B's shape
(36 layers, 16 query / 2 KV heads, d_head 128, d_model 2048, d_mlp 11008), bf16 weights,
timed against the matmul floor of the card.

    python benchmarks/bench_channel_gpu.py [--json out.json]
    pytest benchmarks/bench_channel_gpu.py --benchmark-only -s
    TRITON_INTERPRET=1 python benchmarks/bench_channel_gpu.py --smoke   # CPU plumbing check

Needs CUDA and Triton; without them it says so and exits 0 (pytest: skipped). `--smoke`
runs every row once on CPU at tiny shapes in the Triton interpreter and times nothing.

Rows (each the total over neuron layers l = 1 .. L-1; one call per layer):
- floor: the one product no method can skip, the layer's up rows times every earlier
  head's W_O^T, as one cuBLAS `torch.mm` in bf16 ([d_mlp, d_model] x [d_model, l*H*d_head]);
  2 * d_mlp * d_model * d_head * H * L(L-1)/2 = 58 TFLOP at the 3B shape;
- verilens: `composition_scores(W_V[:l], W_O[:l], W_in[l])` as the library dispatches it
  on CUDA (the Triton kernel for the numerators, then the norms);
- torch path: the same function's chunked batched-matmul path (what runs on CPU), forced
  here by patching the dispatch, so the two GPU strategies are compared in one run.
The result is [d_mlp, l, H] per layer (fp32), 114 M scores in all. Correctness is checked
before timing: the two paths against each other on the last layer, and both against an
fp64 oracle that forms the OV matrices of a few heads.
"""
from __future__ import annotations

import json
import sys

import gpu_bench
import torch

L, H, KV, DH, D, D_MLP = 36, 16, 2, 128, 2048, 11008
DEVICE, DTYPE = "cuda", torch.bfloat16
SMOKE = False


def _smoke_setup():
    global L, H, KV, DH, D, D_MLP, DEVICE, DTYPE, SMOKE
    L, H, KV, DH, D, D_MLP, DEVICE, DTYPE, SMOKE = 3, 4, 2, 16, 64, 40, "cpu", torch.bfloat16, True


def _weights():
    g = torch.Generator(device=DEVICE).manual_seed(0)
    W_V = (torch.randn(L, KV, D, DH, generator=g, device=DEVICE) / D ** 0.5).to(DTYPE)
    W_O = (torch.randn(L, H, DH, D, generator=g, device=DEVICE) / DH ** 0.5).to(DTYPE)
    W_in = (torch.randn(L, D_MLP, D, generator=g, device=DEVICE) / D ** 0.5).to(DTYPE)
    return W_V, W_O, W_in


def _oracle(W_V, W_O, M, heads):
    """float64 composition scores [n, len(heads)] forming each head's d x d OV matrix."""
    out = []
    for l, h in heads:
        ov = W_V[l, h // (H // KV)].double() @ W_O[l, h].double()
        out.append((M.double() @ ov.T).norm(dim=1) / (M.double().norm(dim=1) * ov.norm()))
    return torch.stack(out, 1)


def run(args=None) -> list[dict]:
    from verilens.analysis import channel
    from verilens import ops

    W_V, W_O, W_in = _weights()
    # the floor's operand: every head's W_O^T side by side, [d_model, L*H*d_head]
    WoT = W_O.permute(3, 0, 1, 2).reshape(D, L * H * DH).contiguous()

    def floor():
        for l in range(1, L):
            torch.mm(W_in[l], WoT[:, : l * H * DH])

    def verilens_scores():
        return [channel.composition_scores(W_V[:l], W_O[:l], W_in[l]) for l in range(1, L)]

    def torch_path():
        return [channel.composition_scores(W_V[:l], W_O[:l], W_in[l], backend="torch") for l in range(1, L)]

    # correctness before timing: the last layer, both paths, and a few heads against fp64
    last = L - 1
    a = channel.composition_scores(W_V[:last], W_O[:last], W_in[last])
    b = channel.composition_scores(W_V[:last], W_O[:last], W_in[last], backend="torch")
    heads = [(0, 0), (last - 1, H - 1), (last // 2, 1)]
    rows_n = min(256, D_MLP)
    ora = _oracle(W_V, W_O, W_in[last][:rows_n], heads)
    def at_heads(x):
        return torch.stack([x[:rows_n, l, h] for l, h in heads], 1)

    checks = {"verilens_vs_torch_path": gpu_bench.rel_err(a, b),
              "verilens_vs_fp64_oracle": gpu_bench.rel_err(at_heads(a), ora),
              "torch_path_vs_fp64_oracle": gpu_bench.rel_err(at_heads(b), ora)}
    if SMOKE:  # the kernel itself, in the interpreter (on CPU the dispatch never picks it)
        P = W_V.float().transpose(-1, -2) @ W_V.float()
        checks["kernel_vs_ref"] = gpu_bench.rel_err(ops.composition_numerators(W_O, P, W_in[last], backend="triton"),
                                                    ops.composition_numerators(W_O, P, W_in[last], backend="torch"))
    # the Triton kernel keeps M W_O^T in fp32; cuBLAS rounds it to bf16 (~0.4 % per element)
    tol = {"verilens_vs_fp64_oracle": 1e-4, "kernel_vs_ref": 1e-5}
    bad = {k: v for k, v in checks.items() if not v < tol.get(k, 1e-2)}
    if bad:
        raise AssertionError(f"composition scores disagree: {bad}")
    del a, b

    flops = 2 * D_MLP * D * DH * H * L * (L - 1) / 2
    rows = []
    for name, fn in (("floor: torch.mm, up rows x earlier heads' W_O^T", floor),
                     ("verilens composition_scores (Triton numerators)", verilens_scores),
                     ("composition_scores, torch reference (fp32 chunked matmuls)", torch_path)):
        r = {"row": name, **gpu_bench.bench(fn, SMOKE, 500, 5000)}
        r["tflops_of_floor_work"] = flops / (r["median_ms"] * 1e-3) / 1e12
        rows.append(r)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    for r in rows[1:]:
        r["ratio_to_floor"] = r["median_ms"] / rows[0]["median_ms"]
    for r in rows:
        print(json.dumps(r))
    print(json.dumps({"checks": checks}))
    return rows + [{"checks": checks}]


def environment():
    import triton

    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "shape": {"layers": L, "heads": H, "kv_heads": KV, "d_head": DH, "d_model": D, "d_mlp": D_MLP},
            "dtype": str(DTYPE)}


def test_composition_matrix_gpu(benchmark):
    gpu_bench.pytest_entry(benchmark, run, environment)


if __name__ == "__main__":
    sys.exit(gpu_bench.main("bench_channel_gpu", __doc__, run, environment, _smoke_setup))
