"""Shared setup for the kernel tests: kernel vs reference on fresh random inputs.

Without a GPU the Triton kernels run in the interpreter (TRITON_INTERPRET=1, CPU tensors,
tiny shapes); Triton reads the variable when it is first imported, so it is set here,
before any test module imports it. On a CUDA machine the same tests run on the GPU.

The interpreter rounds fp32 -> bf16 casts toward zero (its `cast_impl` truncates the
mantissa), while the GPU and torch round to nearest even; we patch that one conversion so
that bf16 results are comparable with torch's at the same tolerance as on the GPU. (The
interpreter's bf16 `tl.dot` is also wrong; the kernels upcast bf16 operands there.)"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("0", "", "false", "False")


def _patch_interpreter_bf16_rounding() -> bool:
    try:
        import triton.language as tl
        from triton.runtime import interpreter as ti
    except ImportError:
        return False
    builder = getattr(ti, "InterpreterBuilder", None)
    orig = getattr(builder, "cast_impl", None)
    if orig is None or getattr(orig, "_verilens_rne", False):
        return orig is not None

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            x = np.asarray(src.data, dtype=np.float32)
            bits = torch.tensor(x.reshape(-1)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            return ti.TensorHandle(bits.reshape(x.shape), dst_type.scalar)
        return orig(self, src, dst_type)

    cast_impl._verilens_rne = True
    builder.cast_impl = cast_impl
    return True


if INTERPRETING:
    _patch_interpreter_bf16_rounding()


@pytest.fixture
def gen():
    """A fresh torch generator per test; the seed is printed (shown on failure)."""
    seed = int(np.random.SeedSequence().entropy % (2**31))
    print(f"torch seed {seed}")
    return torch.Generator().manual_seed(seed)
