"""The registered ops (torch.ops.verilens.*): present after `import verilens`, correct
under torch.library.opcheck (schema, fake tensors, autograd registration, AOT dispatch),
gradients against finite differences in float64, torch.compile(fullgraph=True) equal to
eager, no host sync on a GPU, and bad arguments refused by name before anything runs."""
from __future__ import annotations

import pytest
import torch
from kernel_helpers import DEV

import verilens  # noqa: F401  (registers the ops)
from verilens import ops
from verilens.errors import VerilensError
from verilens.kernels import head_masked_o_proj as O
from verilens.kernels import masked_glu as G

OPS = ["head_masked_o_proj", "masked_glu", "channel_paper_terms", "composition_numerators", "dcor_tile_sums",
       "dcor_stream_sums"]


def test_ops_registered_on_import():
    import subprocess
    import sys

    code = "import torch, verilens; print(all(hasattr(torch.ops.verilens, n) for n in %r))" % OPS
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr


def _o_proj_args(gen, kind, dtype=torch.float32, B=2, P=5, H=3, dh=4, N=6, grad=False):
    z = torch.randn(B, P, H * dh, generator=gen, dtype=dtype)
    W = torch.randn(N, H * dh, generator=gen, dtype=dtype)
    b = torch.randn(N, generator=gen, dtype=dtype)
    scale = fill = pos = None
    if kind in ("head", "head_fill"):
        scale = torch.tensor([1.0, 0.0, 0.4], dtype=dtype)
    if kind == "position":
        scale = torch.rand(B, P, H, generator=gen, dtype=dtype)
    if kind == "head_fill":
        fill = torch.randn(H, dh, generator=gen, dtype=dtype)
    if kind != "none":
        pos = torch.tensor([[P - 1, 0, P - 1], [2, 2, 1]])  # repeats: gradients accumulate
    t = [z, W, b, scale, fill]
    if grad:
        t = [x.requires_grad_() if x is not None else None for x in t]
    return (*t, pos, H)


def _glu_args(gen, kind, dtype=torch.float32, B=2, P=4, Fd=7, grad=False):
    gate = torch.randn(B, P, Fd, generator=gen, dtype=dtype)
    up = torch.randn(B, P, Fd, generator=gen, dtype=dtype)
    scale = fill = where = pos = idx = None
    capture = False
    if kind != "none":
        scale = torch.rand(Fd, generator=gen, dtype=dtype)
        scale[[1, 4]] = torch.tensor([0.0, 1.0], dtype=dtype)
        fill = torch.randn(Fd, generator=gen, dtype=dtype)
        where = torch.rand(B, P, generator=gen) > 0.3
        pos, idx, capture = torch.tensor([[3, 0], [1, 1]]), torch.tensor([6, 0, 6]), True
    if kind == "capture_all":
        pos = idx = None
    t = [gate, up, scale, fill]
    if grad:
        t = [x.requires_grad_() if x is not None else None for x in t]
    return (*t, where, pos, idx, capture)


@pytest.mark.parametrize("kind", ["none", "head", "head_fill", "position"])
def test_opcheck_head_masked_o_proj(gen, kind):
    for grad in (False, True):
        torch.library.opcheck(torch.ops.verilens.head_masked_o_proj.default, _o_proj_args(gen, kind, grad=grad))


@pytest.mark.parametrize("kind", ["none", "edit", "capture_all"])
def test_opcheck_masked_glu(gen, kind):
    for grad in (False, True):
        torch.library.opcheck(torch.ops.verilens.masked_glu.default, _glu_args(gen, kind, grad=grad))


def _channel_args(gen, L=2, H=4, KV=2, d=12, dh=5, n=3):
    W_V = torch.randn(L, KV, d, dh, generator=gen)
    W_O = torch.randn(L, H, dh, d, generator=gen)
    G_, U = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    P = W_V.transpose(-1, -2) @ W_V
    return W_V, W_O, G_, U, P


def test_opcheck_channel_ops(gen):
    W_V, W_O, G_, U, P = _channel_args(gen)
    torch.library.opcheck(torch.ops.verilens.channel_paper_terms.default, (W_V, W_O, G_, U))
    torch.library.opcheck(torch.ops.verilens.composition_numerators.default, (W_O, P, G_))
    assert torch.allclose(ops.channel_paper_terms(W_V, W_O, G_, U), ops.channel_paper_terms(W_V, W_O, G_, U,
                                                                                            backend="torch"))


def _dcor_args(gen, V=13, da=4, db=6):
    A = torch.randn(V, da, generator=gen, dtype=torch.float64)
    B = torch.randn(V, db, generator=gen, dtype=torch.float64)
    wa, wb = 1 / A.norm(dim=1), 1 / B.norm(dim=1)
    return A, B, wa, wb


@pytest.mark.parametrize("metric", [0, 1])
def test_opcheck_dcor_ops(gen, metric):
    A, B, wa, wb = _dcor_args(gen)
    if metric == 1:
        A, B = A - A.mean(0), B - B.mean(0)
        wa, wb = (A ** 2).sum(1), (B ** 2).sum(1)
    ga, gb = A[:5] @ A[3:11].T, B[:5] @ B[3:11].T
    torch.library.opcheck(torch.ops.verilens.dcor_tile_sums.default,
                          (ga, gb, wa[:5], wa[3:11], wb[:5], wb[3:11], 0, 3, False, metric, 0.5, 0.7))
    perm = torch.randperm(A.shape[0], generator=gen)
    for p in (None, perm):
        torch.library.opcheck(torch.ops.verilens.dcor_stream_sums.default, (A, B, wa, wb, p, metric, 0.9, 1.1))
        # the compiled core's fused pass and the torch tiles give the same sums
        kw = dict(metric=["cosine", "euclidean"][metric], cx=0.9, cy=1.1, perm=p)
        assert torch.allclose(ops.dcor_stream_sums(A, B, wa, wb, **kw), ops.dcor_stream_sums(A, B, wa, wb, **kw,
                                                                                             backend="torch"))


# ---- gradients ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["none", "head", "head_fill", "position"])
def test_gradcheck_head_masked_o_proj(gen, kind):
    args = _o_proj_args(gen, kind, dtype=torch.float64, grad=True)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.verilens.head_masked_o_proj(*a), args)


def test_gradcheck_head_masked_o_proj_where_through_ops(gen):
    """A per-head scale with `where` (folded into a per-position scale by verilens.ops)
    gets its gradient through the fold; the gradient at s = 1 is the interpolation's."""
    z = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    W = torch.randn(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    scale = torch.ones(3, dtype=torch.float64, requires_grad=True)
    where = torch.tensor([[True, False, True, True], [False, False, True, False]])
    fn = lambda z, W, s: ops.head_masked_o_proj(z, W, n_heads=3, scale=s, where=where,  # noqa: E731
                                                result_positions=torch.tensor([[1, 3], [2, 0]]))
    assert torch.autograd.gradcheck(fn, (z, W, scale))
    # d sum(out) / d s_h at s = 1: (z_h over the `where` positions) @ W_O[h], summed
    out, _ = fn(z, W, scale)
    (g,) = torch.autograd.grad(out.sum(), scale)
    zh = z.detach().view(2, 4, 3, 2)[where]  # [n, 3, 2]
    want = torch.einsum("nhd,mhd->h", zh, W.detach().view(5, 3, 2))
    assert torch.allclose(g, want)


@pytest.mark.parametrize("kind", ["none", "edit", "capture_all"])
def test_gradcheck_masked_glu(gen, kind):
    args = _glu_args(gen, kind, dtype=torch.float64, grad=True)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.verilens.masked_glu(*a), args)


def test_gradients_flow_through_a_hooked_ablation(model):
    """Attribution patching through an intervention: the fused o_proj op inside the model
    gives a head-scale gradient equal to the one through the plain hook path."""
    ids = model.to_tokens("3 5 7 = 15 <think>")
    l, H = 1, model.cfg.n_heads
    o_proj = model.blocks[l].self_attn.o_proj
    seen = {}
    h = o_proj.register_forward_pre_hook(lambda m, a: seen.update(z=a[0].detach()))
    try:
        model(ids)
    finally:
        h.remove()
    z = seen["z"]
    scale = torch.ones(H, requires_grad=True)
    out, _ = ops.head_masked_o_proj(z, o_proj.weight.detach(), None, n_heads=H, scale=scale)
    (g,) = torch.autograd.grad(out.pow(2).sum(), scale)
    s2 = torch.ones(H, requires_grad=True)
    zz = z.view(*z.shape[:2], H, -1) * s2[:, None]
    ref = torch.nn.functional.linear(zz.reshape(z.shape), o_proj.weight.detach())
    (g2,) = torch.autograd.grad(ref.pow(2).sum(), s2)
    assert torch.allclose(g, g2, rtol=1e-5, atol=1e-5)


# ---- torch.compile ------------------------------------------------------------------
def test_compile_fullgraph_equals_eager(gen):
    """One function calling every op through verilens.ops compiles without a graph break
    and gives the eager numbers."""
    torch._dynamo.reset()
    z, W, b, _, fill, pos, H = _o_proj_args(gen, "head_fill")
    scale = torch.tensor([1.0, 0.0, 0.4])
    where = torch.rand(2, 5, generator=gen) > 0.5
    gate, up = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 5, 7, generator=gen)
    gscale = torch.rand(7, generator=gen)
    W_V, W_O, G_, U, P = _channel_args(gen)
    A, B, wa, wb = _dcor_args(gen)

    def f(z, W, b, scale, fill, where, pos, gate, up, gscale, W_V, W_O, G_, U, P, A, B, wa, wb):
        out, res = ops.head_masked_o_proj(z, W, b, n_heads=H, scale=scale, fill=fill, where=where,
                                          result_positions=pos)
        act, cap = ops.masked_glu(gate, up, scale=gscale, fill=0.5, where=where, capture_positions=pos[:, :2],
                                  capture_neurons=torch.tensor([0, 6]))
        terms = ops.channel_paper_terms(W_V, W_O, G_, U)
        num = ops.composition_numerators(W_O, P, G_)
        ga, gb = A[:6] @ A[4:].T, B[:6] @ B[4:].T
        tile = ops.dcor_tile_sums(ga, gb, wa[:6], wa[4:], wb[:6], wb[4:], i0=0, j0=4, upper=True, metric="cosine",
                                  cx=0.5, cy=0.5)
        stream = ops.dcor_stream_sums(A, B, wa, wb, metric="cosine", cx=0.9, cy=1.0)
        return out, res, act, cap, terms, num, tile, stream

    args = (z, W, b, scale, fill, where, pos, gate, up, gscale, W_V, W_O, G_, U, P, A, B, wa, wb)
    eager = f(*args)
    compiled = torch.compile(f, fullgraph=True)(*args)
    for e, c in zip(eager, compiled):
        assert torch.allclose(e, c, rtol=1e-6, atol=1e-6)


# ---- no host sync on a GPU ----------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_ops_do_not_synchronise(gen):
    z, W, b, scale, fill, pos, H = (x.to("cuda") if isinstance(x, torch.Tensor) else x
                                    for x in _o_proj_args(gen, "head_fill", B=2, P=64, H=4, dh=32, N=128))
    scale = torch.tensor([1.0, 0.0, 1.0, 0.5], device="cuda")
    fill = torch.randn(4, 32, device="cuda")
    where = torch.rand(2, 64, device="cuda") > 0.5
    gate, up = torch.randn(2, 64, 96, device="cuda"), torch.randn(2, 64, 96, device="cuda")
    gscale, idx = torch.rand(96, device="cuda"), torch.tensor([0, 5], device="cuda")
    pos = torch.tensor([[63, 0], [3, 3]], device="cuda")

    def call():
        ops.head_masked_o_proj(z, W, b, n_heads=4, scale=scale, fill=fill, where=where, result_positions=pos)
        ops.masked_glu(gate, up, scale=gscale, fill=fill[0, :1].expand(96), where=where, capture_positions=pos,
                       capture_neurons=idx)
    call()  # compile and autotune first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


# ---- bad arguments ------------------------------------------------------------------
def test_bad_arguments_name_the_argument():
    z, W = torch.randn(2, 3, 12), torch.randn(8, 12)
    meta = torch.empty(3, device="meta")
    with pytest.raises(VerilensError, match=r"scale is on meta.*inputs are on cpu"):
        ops.head_masked_o_proj(z, W, n_heads=3, scale=meta)
    with pytest.raises(VerilensError, match=r"must share dtype and device"):
        ops.head_masked_o_proj(z, W.to("meta"), n_heads=3)
    with pytest.raises(VerilensError, match=r"bias must be \[8\]"):
        ops.head_masked_o_proj(z, W, torch.randn(7), n_heads=3)
    with pytest.raises(VerilensError, match=r"floating point"):
        ops.head_masked_o_proj(z.long(), W.long(), n_heads=3)
    with pytest.raises(VerilensError, match=r"result_positions must be integer"):
        ops.head_masked_o_proj(z, W, n_heads=3, result_positions=torch.zeros(2, 1))
    with pytest.raises(VerilensError, match=r"Triton kernel takes float32, float16 or bfloat16"):
        O._triton(z.double(), W.double(), None, None, None, None, 3)
    g = torch.randn(2, 3, 8)
    with pytest.raises(VerilensError, match=r"where is on meta"):
        ops.masked_glu(g, g, scale=torch.ones(8), where=torch.ones(2, 3, dtype=torch.bool, device="meta"))
    with pytest.raises(VerilensError, match=r"capture_neurons must be integer"):
        ops.masked_glu(g, g, capture_neurons=[0.5])
    with pytest.raises(VerilensError, match=r"Triton kernel takes"):
        G._triton(g.double(), g.double(), None, None, None, None, None, False)
    W_V, W_O, G_, U, P = _channel_args(torch.Generator().manual_seed(0))
    with pytest.raises(VerilensError, match=r"W_V must be \[2, kv_heads, 12, 5\]"):
        ops.channel_paper_terms(W_V.transpose(-1, -2), W_O, G_, U)
    with pytest.raises(VerilensError, match=r"U must be \[n_neurons, 12\] with n = 3"):
        ops.channel_paper_terms(W_V, W_O, G_, U[:2])
    with pytest.raises(VerilensError, match=r"not a multiple of 3 kv heads"):
        ops.composition_numerators(W_O, torch.randn(2, 3, 5, 5), G_)
    with pytest.raises(VerilensError, match=r"all inputs must be on one device.*M on meta"):
        ops.composition_numerators(W_O, P, G_.to("meta"))
    A = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(VerilensError, match=r"wb must be \[5\]"):
        ops.dcor_stream_sums(A, A, torch.ones(5, dtype=torch.float64), torch.ones(4), metric="cosine", cx=0, cy=0)
    with pytest.raises(VerilensError, match=r"metric must be one of"):
        ops.dcor_stream_sums(A, A, A[:, 0], A[:, 0], metric="dot", cx=0, cy=0)
    with pytest.raises(VerilensError, match=r"backend must be one of auto, torch, triton"):
        ops.masked_glu(g, g, backend="off")
