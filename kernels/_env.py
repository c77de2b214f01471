"""How Triton runs the kernels here: in the CPU interpreter (TRITON_INTERPRET=1, the tests)
or compiled for a GPU, and at which precision fp32 operands are dotted."""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("0", "", "false", "False")


def fp32_dot_precision(interp: bool) -> str:
    """`tl.dot`'s input_precision for fp32 operands: as torch's own fp32 matmuls, full
    precision unless torch allows TF32 (the interpreter has no TF32)."""
    return "tf32" if (not interp and torch.backends.cuda.matmul.allow_tf32) else "ieee"
