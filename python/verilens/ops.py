"""Dispatch for the fused ops: the Triton kernel on CUDA tensors, the torch reference on
CPU (which performs exactly the model's own ops, so a CPU forward through these ops gives
the plain model's numbers bit for bit).

Importing this module never imports Triton: the kernel modules import it on first use,
so CPU-only installs work without it.

    head_masked_o_proj(z, o_proj.weight, o_proj.bias, n_heads=H, scale=..., fill=...,
                       where=..., result_positions=...) -> (out, result)
        replaces `o_proj(z)` (the attn.hook_z edit and the attn.hook_result einsum);
    masked_glu(gate, up, scale=..., fill=..., where=..., capture_positions=...,
               capture_neurons=...) -> (act, captured)
        replaces `act_fn(gate_proj(x)) * up_proj(x)` and the mlp.hook_post edit; feed
        `act` to down_proj.

`backend`: "auto" (Triton on CUDA, torch elsewhere), "torch" (always the reference) or
"triton" (always the kernel: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)."""
from __future__ import annotations

import importlib.util

import torch

from .errors import VerilensError
from .kernels.head_masked_o_proj import HeadMaskedOProjOutput, head_masked_o_proj_ref
from .kernels.masked_glu import MaskedGLUOutput, masked_glu_ref

__all__ = ["head_masked_o_proj", "masked_glu", "HeadMaskedOProjOutput", "MaskedGLUOutput", "triton_available"]

_BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    """Whether Triton can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def _use_triton(x: torch.Tensor, backend: str, op: str) -> bool:
    if backend not in _BACKENDS:
        raise VerilensError(f"{op}: backend must be one of {', '.join(_BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return False
    if backend == "triton":
        if not triton_available():
            raise VerilensError(f"{op}: backend='triton' needs Triton (pip install 'verilens[triton]')")
        return True
    return isinstance(x, torch.Tensor) and x.is_cuda and triton_available()


def head_masked_o_proj(z, weight, bias=None, *, n_heads=None, scale=None, fill=None, where=None,
                       result_positions=None, backend: str = "auto") -> HeadMaskedOProjOutput:
    """o_proj over concatenated heads with heads ablated or scaled, optionally returning
    the per-head outputs (attn.hook_result) at chosen positions, in one pass.

    z: the o_proj input, [batch, pos, n_heads*d_head] (pass n_heads) or
       [batch, pos, n_heads, d_head]; weight/bias: o_proj's (weight [d_model, n_heads*d_head]).
    scale: None, per head [n_heads] or per position [batch, pos, n_heads]; 1 keeps a head,
       0 replaces its z by `fill`, other values interpolate: z' = s*z + (1-s)*fill.
       Per-head values on the CPU avoid a device sync (the kernel picks its path from them).
    fill: None (0), a float or [n_heads, d_head] (e.g. per-head means for mean ablation).
    where: [batch, pos] bool: apply a per-head scale only there (positions x firing rows).
    result_positions: None (no per-head outputs), "all", or a [batch, k] long tensor.
    Returns (out [batch, pos, d_model], result [batch, k, n_heads, d_model] or None);
    `result` excludes the bias, like TransformerLens's hook_result."""
    if _use_triton(z, backend, "head_masked_o_proj"):
        from .kernels.head_masked_o_proj import head_masked_o_proj_triton

        return head_masked_o_proj_triton(z, weight, bias, n_heads=n_heads, scale=scale, fill=fill, where=where,
                                         result_positions=result_positions)
    return head_masked_o_proj_ref(z, weight, bias, n_heads=n_heads, scale=scale, fill=fill, where=where,
                                  result_positions=result_positions)


def masked_glu(gate, up, *, scale=None, fill=None, where=None, capture_positions=None, capture_neurons=None,
               backend: str = "auto") -> MaskedGLUOutput:
    """SiLU(gate) * up with neurons ablated or scaled, optionally capturing chosen neurons
    at chosen positions, in one pass; the result feeds down_proj.

    gate, up: the gate_proj / up_proj outputs [batch, pos, d_mlp].
    scale: None or [d_mlp]: 1 keeps a neuron, 0 replaces it by `fill`, other values
       interpolate: act' = s*act + (1-s)*fill. fill: None (0), a float or [d_mlp].
    where: [batch, pos] bool: apply the edit only there (e.g. last position, firing rows).
    capture_positions: None/"all" or a [batch, k] long tensor; capture_neurons: None/"all"
       or a list of neuron indices. Capture happens when either is given (the other then
       means all); it is taken after the edit.
    Returns (act [batch, pos, d_mlp], captured [batch, k, n] or None)."""
    if _use_triton(gate, backend, "masked_glu"):
        from .kernels.masked_glu import masked_glu_triton

        return masked_glu_triton(gate, up, scale=scale, fill=fill, where=where, capture_positions=capture_positions,
                                 capture_neurons=capture_neurons)
    return masked_glu_ref(gate, up, scale=scale, fill=fill, where=where, capture_positions=capture_positions,
                          capture_neurons=capture_neurons)
