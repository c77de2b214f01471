"""Helpers shared by the kernel tests (conftest.py sets up the interpreter)."""
from __future__ import annotations

import os

import pytest
import torch

DEV = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("0", "", "false", "False")


def _bf16_rounds_to_nearest() -> bool:
    """True on the GPU, and in the interpreter once conftest.py has patched its casts."""
    if not INTERPRETING:
        return True
    try:
        from triton.runtime import interpreter as ti
    except ImportError:
        return False
    return getattr(getattr(ti.InterpreterBuilder, "cast_impl", None), "_verilens_rne", False)


def triton_or_skip():
    """Skip when the kernels cannot run here (no Triton, or Triton imported too early)."""
    triton = pytest.importorskip("triton")
    if DEV == "cpu" and not INTERPRETING:
        pytest.skip("no GPU and TRITON_INTERPRET is not set")
    return triton


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in float64 (NaN if x has NaN: unwritten poisoned elements)."""
    x, ref = x.double().cpu(), ref.double().cpu()
    den = float(ref.norm())
    return float((x - ref).norm()) / (den if den > 0 else 1.0)


# Floors added to the flash-attention criterion err(kernel) <= 2 * err(torch, same dtype).
FLOOR = {torch.float32: 1e-6, torch.float16: 2e-4, torch.bfloat16: 2e-3}


def assert_close(kernel: torch.Tensor, torch_lowp: torch.Tensor, oracle: torch.Tensor, dtype, what: str):
    """The kernel's error against the float64 oracle stays within twice plain torch's
    error in the same precision (plus a small per-dtype floor); no NaN anywhere."""
    assert kernel.shape == oracle.shape, f"{what}: shape {tuple(kernel.shape)} != {tuple(oracle.shape)}"
    assert kernel.dtype == dtype, f"{what}: dtype {kernel.dtype} != {dtype}"
    n_bad = int((~torch.isfinite(kernel)).sum())
    assert n_bad == 0, f"{what}: {n_bad} elements NaN/inf (unwritten poisoned output?)"
    ek, et = rel_err(kernel, oracle), rel_err(torch_lowp, oracle)
    factor = 2.0 if _bf16_rounds_to_nearest() or dtype != torch.bfloat16 else 4.0
    assert ek <= factor * et + FLOOR[dtype], f"{what}: kernel error {ek:.3e} vs torch {et:.3e} ({dtype})"


def poisoned(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEV)


