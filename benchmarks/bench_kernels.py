"""GPU benchmarks of the fused ops (issue 4, sections 4 and 6): each Triton kernel
against the unfused torch version, `triton.testing.do_bench`, fp16 and bf16, at
Qwen2.5-3B shapes (d_model 2048, 16 heads x 128, d_mlp 11008), batch 8 x 256 tokens
(and a decoding step: batch 8 x 1 token).

    python benchmarks/bench_kernels.py [--dtype fp16 bf16] [--json out.json]
    pytest benchmarks/bench_kernels.py --benchmark-only -s
    TRITON_INTERPRET=1 python benchmarks/bench_kernels.py --smoke   # CPU plumbing check

Needs CUDA and Triton; without them it says so and exits 0 (pytest: skipped). `--smoke`
runs every row once on CPU in the Triton interpreter at tiny shapes, times nothing, and
only checks that the rows and their correctness checks work before GPU time is spent.

The baselines are what the hooked runtime does today without the ops, and the torch
references the tests use (`*_ref`), so the two never drift:
- o_proj: the plain `F.linear` (the floor: no ablation), the runtime's hand edit of
  hook_z (clone, zero/mean the heads' slices, `torch.where` over positions/rows) then
  `F.linear`, and for hook_result the runtime's gather + einsum;
- GLU: Hugging Face's `F.silu(gate) * up` (the floor), then the runtime's hook_post edit
  (clone, index set, `torch.where`) and capture (gather); `down_proj` (cuBLAS) is timed
  alongside to show what share of the MLP the elementwise part is, and whether fusing
  down_proj could pay (the op returns act for torch's matmul).
Every row reports do_bench's median and its 20-80% quantiles; every ratio is baseline
median / candidate median from the same process on the same GPU. Correctness is checked
(relative error against the torch version) before anything is timed.
"""
from __future__ import annotations

import sys

import gpu_bench
import torch
import torch.nn.functional as F

B, T = 8, 256
D_MODEL, N_HEADS, D_HEAD, D_MLP = 2048, 16, 128, 11008
HEADS = [3, 7, 11]  # ablated heads
NEURONS = list(range(100, 11008, 688))  # 16 neurons
N_POS = 2  # positions per sequence for hook_result / capture
DEVICE = "cuda"
SMOKE = False  # --smoke: CPU, tiny shapes, one call per row, no timing


def _smoke_setup():
    global B, T, D_MODEL, N_HEADS, D_HEAD, D_MLP, HEADS, NEURONS, DEVICE, SMOKE
    B, T, D_MODEL, N_HEADS, D_HEAD, D_MLP = 2, 9, 48, 4, 16, 96
    HEADS, NEURONS, DEVICE, SMOKE = [1, 3], [2, 50, 95], "cpu", True


def _inputs(dtype, M_tokens):
    dev = DEVICE
    g = torch.Generator(device=dev).manual_seed(0)
    z = torch.randn(B, M_tokens, N_HEADS * D_HEAD, device=dev, generator=g).to(dtype)
    W_O = (torch.randn(D_MODEL, N_HEADS * D_HEAD, device=dev, generator=g) / (N_HEADS * D_HEAD) ** 0.5).to(dtype)
    gate = torch.randn(B, M_tokens, D_MLP, device=dev, generator=g).to(dtype)
    up = torch.randn(B, M_tokens, D_MLP, device=dev, generator=g).to(dtype)
    W_down = (torch.randn(D_MODEL, D_MLP, device=dev, generator=g) / D_MLP ** 0.5).to(dtype)
    pos = torch.stack([torch.full((B,), M_tokens - 1, device=dev),
                       torch.randint(0, M_tokens, (B,), device=dev, generator=g)], 1)[:, :N_POS].long()
    last = torch.zeros(B, M_tokens, dtype=torch.bool, device=dev)
    last[:, -1] = True
    return z, W_O, gate, up, W_down, pos, last


# ---- the unfused torch versions (what the runtime does without the ops) ---------------
def oproj_hand_edit(z, W_O, heads, where=None, mean=None):
    b, p, _ = z.shape
    z4 = z.view(b, p, N_HEADS, D_HEAD)
    new = z4.clone()
    new[:, :, heads] = 0 if mean is None else mean[heads].to(z.dtype)
    if where is not None:
        new = torch.where(where[..., None, None], new, z4)
    return F.linear(new.reshape(b, p, -1), W_O), new


def oproj_hand_edit_result(z, W_O, heads, pos):
    out, new = oproj_hand_edit(z, W_O, heads)
    zs = new[torch.arange(z.shape[0], device=z.device)[:, None], pos]
    return out, torch.einsum("bkhd,mhd->bkhm", zs, W_O.view(D_MODEL, N_HEADS, D_HEAD))


def glu_hand_edit(gate, up, idx, where=None, pos=None, cap_idx=None):
    act = F.silu(gate) * up
    new = act.clone()
    new[..., idx] = 0
    if where is not None:
        new = torch.where(where[..., None], new, act)
    cap = None
    if pos is not None:
        cap = new[torch.arange(new.shape[0], device=new.device)[:, None], pos][..., cap_idx]
    return new, cap


def run(args=None):
    dtypes = tuple(args.dtype) if args is not None else ("fp16", "bf16")
    from verilens.kernels.head_masked_o_proj import head_masked_o_proj_ref, head_masked_o_proj_triton
    from verilens.kernels.masked_glu import masked_glu_ref, masked_glu_triton

    rows = []

    def add(group, name, fn, baseline=None, check=None):
        if check is not None:
            got, ref = check()
            err = gpu_bench.rel_err(got, ref)
            tol = 2e-2 if "bf16" in group else 5e-3
            assert err < tol, f"{group} / {name}: relative error {err:.2e} against torch"
        r = {"group": group, "name": name, **gpu_bench.bench(fn, SMOKE)}
        if baseline is not None:
            base = next(x for x in rows if x["group"] == group and x["name"] == baseline)
            r["baseline"] = baseline
            r["ratio"] = base["median_ms"] / r["median_ms"]
        rows.append(r)
        if SMOKE:
            print(f"{group:28s} {name:50s} ran" + (" (checked)" if check else ""), flush=True)
            return
        print(f"{group:28s} {name:50s} {r['median_ms'] * 1e3:9.1f} us  [{r['p20_ms'] * 1e3:.1f}, "
              f"{r['p80_ms'] * 1e3:.1f}]" + (f"  x{r['ratio']:.2f} vs {baseline}" if baseline else ""), flush=True)

    def pair(group, base_name, base_fn, name, fn, pick=lambda r: r):
        """Time the torch baseline, then the kernel (checked against the baseline first)."""
        add(group, base_name, base_fn)
        add(group, name, fn, base_name, check=lambda: (pick(fn()), pick(base_fn())))

    nh, nn_, npos = len(HEADS), len(NEURONS), N_POS
    for dname in dtypes:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dname]
        for tokens, tag in ((T, f"{B}x{T}"), (1, f"{B}x1 decode")):
            z, W_O, gate, up, W_down, pos, last = _inputs(dtype, tokens)
            scale = torch.ones(N_HEADS)
            scale[HEADS] = 0
            mean = z.view(B, tokens, N_HEADS, D_HEAD).float().mean((0, 1))
            nscale = torch.ones(D_MLP)
            nscale[NEURONS] = 0

            def ko(**kw):  # the o_proj kernel
                return head_masked_o_proj_triton(z, W_O, n_heads=N_HEADS, **kw)

            def kg(**kw):  # the GLU kernel
                return masked_glu_triton(gate, up, **kw)

            out, res, act_, cap = (lambda r: r[0]), (lambda r: r[1]), (lambda r: r[0]), (lambda r: r[1])
            g = f"o_proj {dname} {tag}"
            pair(g, "plain F.linear (no ablation; floor)", lambda: (F.linear(z, W_O),),
                 "kernel, no ablation", lambda: ko(), out)
            pair(g, f"hand edit: zero {nh} heads + F.linear", lambda: oproj_hand_edit(z, W_O, HEADS),
                 f"kernel: zero {nh} heads", lambda: ko(scale=scale), out)
            pair(g, f"hand edit: mean {nh} heads + F.linear", lambda: oproj_hand_edit(z, W_O, HEADS, mean=mean),
                 f"kernel: mean {nh} heads", lambda: ko(scale=scale, fill=mean), out)
            pair(g, f"hand edit: zero {nh} heads at last pos + F.linear",
                 lambda: oproj_hand_edit(z, W_O, HEADS, where=last),
                 f"kernel: zero {nh} heads at last pos", lambda: ko(scale=scale, where=last), out)
            pair(g, f"hand edit + hook_result einsum at {npos} pos/seq",
                 lambda: oproj_hand_edit_result(z, W_O, HEADS, pos),
                 f"kernel: zero {nh} heads + hook_result at {npos} pos/seq",
                 lambda: ko(scale=scale, result_positions=pos), res)
            add(g, "torch reference (head_masked_o_proj_ref), same job",
                lambda: head_masked_o_proj_ref(z, W_O, n_heads=N_HEADS, scale=scale, result_positions=pos))

            g = f"glu {dname} {tag}"
            pair(g, "HF F.silu(gate) * up (no edit; floor)", lambda: (F.silu(gate) * up,),
                 "kernel, no edit", lambda: kg(), act_)
            pair(g, f"hand edit: {nn_} neurons at last pos", lambda: glu_hand_edit(gate, up, NEURONS, where=last),
                 f"kernel: {nn_} neurons at last pos", lambda: kg(scale=nscale, where=last), act_)
            pair(g, f"hand edit + capture {nn_} neurons at {npos} pos/seq",
                 lambda: glu_hand_edit(gate, up, NEURONS, where=last, pos=pos, cap_idx=NEURONS),
                 f"kernel: edit + capture {nn_} neurons at {npos} pos/seq",
                 lambda: kg(scale=nscale, where=last, capture_positions=pos, capture_neurons=NEURONS), cap)
            add(g, "torch reference (masked_glu_ref), same job", lambda: masked_glu_ref(
                gate, up, scale=nscale, where=last, capture_positions=pos, capture_neurons=NEURONS))
            act = F.silu(gate) * up
            add(g, "down_proj F.linear alone (cuBLAS)", lambda: F.linear(act, W_down))
            pair(g, "MLP tail unfused: hand edit + down_proj",
                 lambda: (F.linear(glu_hand_edit(gate, up, NEURONS, where=last)[0], W_down),),
                 "MLP tail: kernel + down_proj", lambda: (F.linear(kg(scale=nscale, where=last).act, W_down),), out)
            del z, W_O, gate, up, W_down, act
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
    return rows


def environment():
    import triton

    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "shapes": {"batch": B, "tokens": T, "d_model": D_MODEL, "n_heads": N_HEADS, "d_head": D_HEAD,
                       "d_mlp": D_MLP}}


def _add_args(ap):
    ap.add_argument("--dtype", nargs="+", default=["fp16", "bf16"], choices=["fp16", "bf16"])


def test_kernels_do_bench(benchmark):
    gpu_bench.pytest_entry(benchmark, run, environment)


if __name__ == "__main__":
    sys.exit(gpu_bench.main("bench_kernels", __doc__, run, environment, _smoke_setup, _add_args))
