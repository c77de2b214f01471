"""Ahead-of-time compilation of the Triton kernels for NVIDIA targets, without a GPU.

The interpreter runs the kernels as numpy code and misses what only the compiler checks
(types merged across branches, dot shapes and dtypes, layouts). Triton's wheel carries
the NVIDIA backend and ptxas, so each kernel variant the launchers can produce is compiled
here for sm_90 (H100), and the main variants also for sm_80 (A100); the channel-score
kernels and the distance-correlation kernel (each dot precision) for sm_90, with the launcher's specialisations (16-byte
aligned pointers and strides, unit column stride). We also check that the kept-heads
loop of head_masked_o_proj is software-pipelined like the plain GEMM (same shared-memory
staging), so skipping ablated heads never slows the matmul down.

The compile runs in a subprocess without TRITON_INTERPRET (set for the other tests)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _compile_all() -> dict:
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from verilens.kernels import head_masked_o_proj as H
    from verilens.kernels import masked_glu as G

    def compile_one(fn, sig, consts, arch, num_warps):
        full = {n: ("constexpr" if n in consts else sig[n]) for n in fn.arg_names}
        aligned = {n for n, t in sig.items() if t.startswith("*")} | {
            "N", "stride_zm", "stride_wn", "stride_sm", "M_BUCKET", "Fd", "stride_gm", "stride_um"}
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
                 if n not in consts and n in aligned}
        k = triton.compile(ASTSource(fn, full, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": num_warps, "num_stages": 3})
        return k.metadata.shared

    out = {}
    hk = H._build(False)
    #        dtype   edit  fill  capture d_head
    for dt, edit, fill, cap, dh in [("fp16", False, False, False, 128), ("fp16", True, False, False, 128),
                                    ("bf16", True, True, True, 128), ("fp32", True, False, True, 64),
                                    ("bf16", True, False, False, 80), ("fp16", False, False, True, 24)]:
        archs = (80, 90) if (fill, cap, dh) == (False, False, 128) else (90,)
        ptr = "*" + dt
        sig = dict(Z=ptr, W=ptr, OUT=ptr, S="*fp32", FILL="*fp32", BIAS=ptr, POS="*i64", RES=ptr, M="i32", N="i32",
                   P="i32", KP="i32", R="i32", stride_zm="i32", stride_wn="i32", stride_wk="i32", stride_sm="i32",
                   M_BUCKET="i32")
        consts = dict(stride_wk=1, H=16, DH=dh, EDIT=edit, HAS_FILL=fill, HAS_BIAS=True, CAPTURE=cap, UPCAST=False,
                      PREC="ieee" if dt == "fp32" else "tf32", BLOCK_M=128, BLOCK_N=128,
                      BLOCK_K=H._block_k(dh, 4 if dt == "fp32" else 2, False), BLOCK_R=16, GROUP_M=8)
        for arch in archs:
            out[f"head/{dt}/edit{int(edit)}/fill{int(fill)}/cap{int(cap)}/dh{dh}/sm{arch}"] = compile_one(
                hk, sig, consts, arch, 8)
    gk = G._build(False)
    for dt, sc, fl, wh, cap, cpos, cidx in [("fp16", False, False, False, False, False, False),
                                            ("bf16", True, True, True, True, True, True)]:
        ptr = "*" + dt
        sig = dict(G=ptr, U=ptr, ACT=ptr, S="*fp32", FILL="*fp32", WHERE="*i8", POS="*i64", IDX="*i64", CAP=ptr,
                   M="i32", Fd="i32", P="i32", KP="i32", R="i32", NC="i32", stride_gm="i32", stride_um="i32",
                   M_BUCKET="i32")
        consts = dict(HAS_SCALE=sc, HAS_FILL=fl, HAS_WHERE=wh, CAPTURE=cap, CAP_POS=cpos, CAP_IDX=cidx,
                      BLOCK_M=2, BLOCK_F=1024)
        for arch in ((80, 90) if sc else (90,)):
            out[f"glu/{dt}/scale{int(sc)}/cap{int(cap)}/sm{arch}"] = compile_one(gk, sig, consts, arch, 4)
    from verilens.kernels import channel_scores as C

    ck = C._kernels()
    for dt in ("bf16", "fp32"):
        ptr = "*" + dt
        common = dict(n="i32", H="i32", GROUP="i32", D="i32", DH="i32")
        blocks = dict(BLOCK_N=64, BLOCK_D=64, BLOCK_K=128)
        out[f"channel/paper/{dt}/sm90"] = compile_one(
            ck["paper"], dict(wv=ptr, wo=ptr, g=ptr, u=ptr, out="*fp32", **common), blocks, 90, 4)
        out[f"channel/composition/{dt}/sm90"] = compile_one(  # bf16: a native tensor-core dot
            ck["composition"], dict(wo=ptr, p="*fp32", m=ptr, out="*fp32", **common),
            dict(blocks, UPCAST=False, PREC="ieee"), 90, 4)
    from verilens.kernels import distance_correlation as DC

    dk = DC._build(False)
    for dt, prec, cfg in (("bf16", "tf32", (128, 128, 64, 8, 3)), ("fp32", "ieee", (128, 64, 64, 4, 3)),
                          ("fp32", "tf32", (128, 128, 32, 8, 3)), ("fp64", "ieee", (64, 64, 16, 4, 2))):
        ptr = "*" + dt
        sig = dict(A=ptr, B=ptr, PERM="*i64", WA="*fp64", WB="*fp64", OUT="*fp64", V="i32", DA="i32", DB="i32",
                   stride_a="i32", stride_b="i32", cx="fp32", cy="fp32")
        consts = dict(METRIC=0, HAS_PERM=False, UPCAST=False, ACC_F64=dt == "fp64", PREC=prec,
                      BLOCK_M=cfg[0], BLOCK_N=cfg[1], BLOCK_K=cfg[2])
        out[f"dcor/{dt}/{prec}/sm90"] = compile_one(dk, sig, consts, 90, cfg[3])
    return out


def test_kernels_compile_for_sm80_and_sm90():
    pytest.importorskip("triton")
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        pytest.skip("this Triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence 3.9's warning; the default stays
    r = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=900)
    if r.returncode != 0 and "ptxas" in r.stderr and "not found" in r.stderr.lower():
        pytest.skip("ptxas not available")
    assert r.returncode == 0, r.stderr[-4000:]
    shared = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(shared) == 19


if __name__ == "__main__":
    print(json.dumps(_compile_all()))
