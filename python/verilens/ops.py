"""THE door to verilens' kernels. Everything above the kernels (HookedModel, the
analysis, the geometry, other tools) calls these functions; each is a registered torch
op (`torch.ops.verilens.<name>`, see verilens/kernels/) behind one `backend` argument:

    "auto"    the registered op: the Triton kernel on CUDA tensors, the torch reference
              on CPU tensors (exactly the model's own ops, so a CPU forward through these
              ops gives the plain model's numbers bit for bit); differentiable where the
              op has autograd; composes with torch.compile(fullgraph=True).
    "torch"   the pure-torch reference, on any device.
    "triton"  the Triton kernel itself (CUDA tensors, or CPU tensors under
              TRITON_INTERPRET=1); forward only: for tests and benchmarks.

    head_masked_o_proj(z, o_proj.weight, o_proj.bias, n_heads=H, scale=..., fill=...,
                       where=..., result_positions=...) -> (out, result)
        replaces `o_proj(z)` (the attn.hook_z edit and the attn.hook_result einsum);
        autograd with respect to z, weight, bias, scale and fill.
    masked_glu(gate, up, scale=..., fill=..., where=..., capture_positions=...,
               capture_neurons=...) -> (act, captured)
        replaces `act_fn(gate_proj(x)) * up_proj(x)` and the mlp.hook_post edit; feed
        `act` to down_proj; autograd with respect to gate, up, scale and fill.
    channel_paper_terms(W_V, W_O, G, U) -> [L*H, n]
    composition_numerators(W_O, P, M) -> [L*H, n]
        the channel scores' all-heads x all-neurons terms (verilens.analysis.channel).
    dcor_tile_sums(ga, gb, ...) -> [6] float64; dcor_stream_sums(A, B, ...) -> [6]
        the distance correlation's Pearson sums over one Gram tile, or over all pairs
        in one fused pass (verilens.geometry.correlation).

On CUDA no op reads a value back to the host: scales, masks and positions are tensors
on the inputs' device, and the path is chosen from shapes and dtypes. Bad arguments
(shapes, devices, dtypes) raise VerilensError naming the argument before anything runs.

Importing this module never imports Triton: the kernels import it on first use."""
from __future__ import annotations

from .kernels import _launch
from .kernels import channel_scores as _channel
from .kernels import distance_correlation as _dcor
from .kernels import head_masked_o_proj as _o_proj
from .kernels import masked_glu as _glu
from .kernels.head_masked_o_proj import HeadMaskedOProjOutput
from .kernels.masked_glu import MaskedGLUOutput

__all__ = ["BACKENDS", "HeadMaskedOProjOutput", "MaskedGLUOutput", "channel_paper_terms", "composition_numerators",
           "dcor_stream_sums", "dcor_tile_sums", "head_masked_o_proj", "masked_glu", "triton_available"]

BACKENDS = _launch.BACKENDS
triton_available = _launch.triton_available


def _pick(op: str, backend: str, registered, ref, triton):
    _launch.check_backend(op, backend)
    return {"auto": registered, "torch": ref, "triton": triton}[backend]


def head_masked_o_proj(z, weight, bias=None, *, n_heads=None, scale=None, fill=None, where=None,
                       result_positions=None, backend: str = "auto") -> HeadMaskedOProjOutput:
    """o_proj over concatenated heads with heads ablated or scaled, optionally returning
    the per-head outputs (attn.hook_result) at chosen positions, in one pass.

    z: the o_proj input, [batch, pos, n_heads*d_head] (pass n_heads) or
       [batch, pos, n_heads, d_head]; weight/bias: o_proj's (weight [d_model, n_heads*d_head]).
    scale: None, per head [n_heads] or per position [batch, pos, n_heads]; 1 keeps a head,
       0 replaces its z by `fill`, other values interpolate: z' = s*z + (1-s)*fill.
       A tensor must be on z's device (numbers and lists are accepted for CPU inputs).
    fill: None (0), a float or [n_heads, d_head] (e.g. per-head means for mean ablation).
    where: [batch, pos] bool: apply a per-head scale only there (positions x firing rows).
    result_positions: None (no per-head outputs), "all", or a [batch, k] long tensor.
    Returns (out [batch, pos, d_model], result [batch, k, n_heads, d_model] or None);
    `result` excludes the bias, like TransformerLens's hook_result."""
    fn = _pick("head_masked_o_proj", backend, _o_proj.head_masked_o_proj, _o_proj.head_masked_o_proj_ref,
               _o_proj.head_masked_o_proj_triton)
    return fn(z, weight, bias, n_heads=n_heads, scale=scale, fill=fill, where=where,
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
    fn = _pick("masked_glu", backend, _glu.masked_glu, _glu.masked_glu_ref, _glu.masked_glu_triton)
    return fn(gate, up, scale=scale, fill=fill, where=where, capture_positions=capture_positions,
              capture_neurons=capture_neurons)


def channel_paper_terms(W_V, W_O, G, U, *, backend: str = "auto"):
    """[L*H, n] float32: SiLU(g_i . ov_c) * (u_i . ov_c) for every head c = layer*H + head
    and neuron i, ov_c = diag(W_V^c W_O^c). W_V [L, KV, d_model, d_head] per KV head
    (shared by its query heads, never repeated in memory), W_O [L, H, d_head, d_model],
    G / U the neurons' gate / up rows [n, d_model]."""
    fn = _pick("channel_paper_terms", backend, _channel.paper_terms, _channel.paper_terms_ref,
               _channel.paper_terms_triton)
    return fn(W_V, W_O, G, U)


def composition_numerators(W_O, P, M, *, backend: str = "auto"):
    """[L*H, n] float32: ||m_i (W_V^c W_O^c)^T|| = sqrt(x P_c x^T), x = m_i (W_O^c)^T, for
    every head c and row m_i of M [n, d_model]; P [L, KV, d_head, d_head] = W_V^T W_V per
    KV head. No d_model x d_model matrix is formed."""
    fn = _pick("composition_numerators", backend, _channel.composition_numerators,
               _channel.composition_numerators_ref, _channel.composition_numerators_triton)
    return fn(W_O, P, M)


def dcor_tile_sums(ga, gb, wa_rows, wa_cols, wb_rows, wb_cols, *, i0: int, j0: int, upper: bool, metric: str,
                   cx: float, cy: float, backend: str = "auto"):
    """[6] float64 (pair count, sum x, sum y, sum x^2, sum y^2, sum xy) over one tile of the
    token x token plane, from the two models' Gram tiles ga, gb [m, n] (rows i0.., columns
    j0..) and per-row weights (inverse norms for "cosine", squared norms of the centred
    rows for "euclidean"); x = d_A - cx, y = d_B - cy; `upper` keeps only pairs i < j.
    CPU: the compiled core's vectorised reduction (OpenMP); CUDA: torch in float64."""
    fn = _pick("dcor_tile_sums", backend, _dcor.tile_sums, _dcor.tile_sums_ref, _dcor.tile_sums_ref)
    return fn(ga, gb, wa_rows, wa_cols, wb_rows, wb_cols, i0=i0, j0=j0, upper=upper, metric=metric, cx=cx, cy=cy)


def dcor_stream_sums(A, B, wa, wb, *, metric: str, cx: float, cy: float, perm=None, backend: str = "auto"):
    """[6] float64 Pearson sums over all pairs i < j of x = d_A(i, j) - cx and
    y = d_B(p(i), p(j)) - cy in one fused pass that never stores a tile: A [V, d_a],
    B [V, d_b] (centred for "euclidean"), wa / wb float64 [V] row weights (as for
    dcor_tile_sums), perm an optional int64 row map for B (Mantel). CPU: the compiled
    core's cache-blocked kernel; CUDA: the Triton kernel."""
    fn = _pick("dcor_stream_sums", backend, _dcor.stream_sums, _dcor.stream_sums_ref, _dcor.stream_sums_triton)
    return fn(A, B, wa, wb, metric=metric, cx=cx, cy=cy, perm=perm)
