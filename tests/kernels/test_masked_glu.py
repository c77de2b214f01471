"""masked_glu: the Triton kernel against the torch reference (float64 oracle, flash-
attention style tolerance), the CPU dispatch against the plain model's MLP, and neuron
ablation against editing hook_post by hand. In the interpreter on CPU: tiny shapes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import DEV, assert_close, poisoned, triton_or_skip

from verilens import ops
from verilens.errors import VerilensError
from verilens.kernels.masked_glu import masked_glu_ref

f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16


def _edit(kind, gen, B, P, Fd):
    """(scale, fill, where) for an edit kind."""
    scale = torch.ones(Fd)
    scale[torch.randperm(Fd, generator=gen)[:7]] = 0
    return {
        "none": (None, None, None),
        "zero": (scale, None, None),
        "value_where": (scale, 2.5, torch.rand(B, P, generator=gen) > 0.5),  # ablate_neurons(value=2.5) on some rows
        "fractional": (torch.rand(Fd, generator=gen) * 2, None, None),
        "fill_vec_where": (scale * torch.rand(Fd, generator=gen), torch.randn(Fd, generator=gen),
                           torch.rand(B, P, generator=gen) > 0.3),
    }[kind]


# (B, P, d_mlp, dtype, edit, capture_positions, capture_neurons)
CASES = [
    (1, 1, 64, f32, "none", None, None),
    (2, 7, 150, f16, "zero", "pos", None),
    (1, 59, 300, bf16, "value_where", None, "idx"),
    (2, 97, 96, f32, "fractional", "pos", "idx"),
    (2, 59, 150, f16, "fill_vec_where", "pos", "idx"),
    (2, 7, 200, bf16, "none", "all", "idx"),
    (1, 97, 130, f16, "value_where", "pos", "all"),
]


KINDS = ["none", "zero", "value_where", "fractional", "fill_vec_where"]
# every edit kind in every dtype at one odd shape (ragged d_mlp tiles, both captures on)
GRID = [(2, 59, 300, dt, kind, "pos", "idx") for dt in (f32, f16, bf16) for kind in KINDS]


@pytest.mark.parametrize("B,P,Fd,dtype,kind,cpos,cidx", CASES + GRID)
def test_kernel_matches_reference(gen, B, P, Fd, dtype, kind, cpos, cidx):
    triton_or_skip()
    from verilens.kernels.masked_glu import masked_glu_triton

    gate = (torch.randn(B, P, Fd, generator=gen) * 2).to(DEV, dtype)
    up = torch.randn(B, P, Fd, generator=gen).to(DEV, dtype)
    scale, fill, where = _edit(kind, gen, B, P, Fd)
    pos = idx = None
    if cpos == "pos":  # repeats allowed, last position included
        pos = torch.randint(0, P, (B, 3), generator=gen)
        pos[:, -1] = P - 1
    elif cpos == "all":
        pos = "all"
    if cidx == "idx":  # repeats and both ends included
        idx = torch.cat([torch.randint(0, Fd, (5,), generator=gen), torch.tensor([0, Fd - 1, 3, 3])])
    elif cidx == "all":
        idx = "all"
    capture = cpos is not None or cidx is not None
    K = 3 if cpos == "pos" else P
    NC = 9 if cidx == "idx" else Fd
    dev = lambda t: t.to(DEV) if isinstance(t, torch.Tensor) else t  # noqa: E731
    kw = dict(scale=dev(scale), fill=dev(fill), where=dev(where), capture_positions=dev(pos), capture_neurons=dev(idx))
    act_buf = poisoned((B, P, Fd), dtype)
    cap_buf = poisoned((B, K, NC), dtype) if capture else None
    act, cap = masked_glu_triton(gate, up, **kw, out=act_buf, captured=cap_buf)
    assert act.data_ptr() == act_buf.data_ptr()
    low = masked_glu_ref(gate, up, **kw)
    oracle = masked_glu_ref(gate.double().cpu(), up.double().cpu(), scale=scale, fill=fill, where=where,
                            capture_positions=pos, capture_neurons=idx)
    assert_close(act, low.act, oracle.act, dtype, "act")
    if capture:
        assert cap.shape == (B, K, NC)
        assert_close(cap, low.captured, oracle.captured, dtype, "captured")
        # the capture is exactly the kept activation at those places (same ops, same rounding)
        sel = act if not isinstance(pos, torch.Tensor) else act[torch.arange(B, device=DEV)[:, None], pos.to(DEV)]
        sel = sel if not isinstance(idx, torch.Tensor) else sel[..., idx.to(DEV)]
        assert torch.equal(cap, sel)
    else:
        assert cap is None
    if dtype == f16:  # fp32 SiLU rounded to half, then the product: torch's numbers up to exp's last ulp
        assert (act != low.act).float().mean() < 0.01


def test_ablation_equals_hand_edit_kernel(gen):
    triton_or_skip()
    from verilens.kernels.masked_glu import masked_glu_triton

    B, P, Fd = 2, 7, 96
    gate = torch.randn(B, P, Fd, generator=gen).to(DEV)
    up = torch.randn(B, P, Fd, generator=gen).to(DEV)
    idx = [3, 50, 95]
    scale = torch.ones(Fd)
    scale[idx] = 0
    last = torch.zeros(B, P, dtype=torch.bool)
    last[:, -1] = True
    hand = F.silu(gate) * up
    hand[:, -1, idx] = 0  # ablate_neurons(..., positions="last") by hand
    act, _ = masked_glu_triton(gate, up, scale=scale, where=last.to(DEV), out=poisoned((B, P, Fd), f32))
    assert torch.allclose(act, hand, rtol=1e-5, atol=1e-6)
    assert bool((act[:, -1, idx] == 0).all())


# ---- the CPU dispatch: exactly the plain model's numbers ------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dispatch_cpu_equals_hand_edit(gen, dtype):
    B, P, Fd = 2, 5, 40
    gate = torch.randn(B, P, Fd, generator=gen).to(dtype)
    up = torch.randn(B, P, Fd, generator=gen).to(dtype)
    act, cap = ops.masked_glu(gate, up)
    assert cap is None and torch.equal(act, F.silu(gate) * up)
    idx = [1, 7, 39]
    scale = torch.ones(Fd)
    scale[idx] = 0
    where = torch.zeros(B, P, dtype=torch.bool)
    where[1, 2:] = True
    hand = F.silu(gate) * up
    new = hand.clone()
    new[..., idx] = -1.5
    hand = torch.where(where[..., None], new, hand)
    pos = torch.tensor([[4], [2]])
    act, cap = ops.masked_glu(gate, up, scale=scale, fill=-1.5, where=where, capture_positions=pos,
                              capture_neurons=[7, 0])
    assert torch.equal(act, hand)
    assert torch.equal(cap, hand[torch.arange(B)[:, None], pos][..., [7, 0]])
    r = masked_glu_ref(gate, up, scale=scale, fill=-1.5, where=where, capture_positions=pos, capture_neurons=[7, 0])
    assert torch.equal(r.act, act) and torch.equal(r.captured, cap)


def test_cpu_path_equals_model_mlp():
    """On the real countdown-tiny model (fp32, CPU): down_proj(masked_glu(gate, up)) is
    the MLP's own output bit for bit, and an ablated neuron equals the hand edit."""
    import verilens

    model = verilens.load("countdown-tiny")
    mlp = model.blocks[3].mlp
    seen = {}
    h = mlp.register_forward_hook(lambda m, a, out: seen.update(x=a[0].detach(), out=out.detach()))
    try:
        model(["3 5 7 = 15 <think>", "1 2 = 3"])
    finally:
        h.remove()
    x = seen["x"]
    with torch.no_grad():
        gate, up = mlp.gate_proj(x), mlp.up_proj(x)
        act, _ = ops.masked_glu(gate, up)
        assert torch.equal(mlp.down_proj(act), seen["out"])
        scale = torch.ones(model.cfg.d_mlp)
        scale[[5, 17]] = 0
        act, cap = ops.masked_glu(gate, up, scale=scale, capture_neurons=[5, 6])
        hand = mlp.act_fn(gate) * up
        hand[..., [5, 17]] = 0
        assert torch.equal(act, hand)
        assert torch.equal(cap, hand[..., [5, 6]])


def test_bad_inputs():
    g = torch.randn(2, 3, 8)
    with pytest.raises(VerilensError, match="share shape"):
        ops.masked_glu(g, torch.randn(2, 3, 9))
    with pytest.raises(VerilensError, match=r"\[8\]"):
        ops.masked_glu(g, g, scale=torch.ones(7))
    with pytest.raises(VerilensError, match="needs a scale"):
        ops.masked_glu(g, g, fill=1.0)
    with pytest.raises(VerilensError, match=r"where must be \[batch, pos\]"):
        ops.masked_glu(g, g, scale=torch.ones(8), where=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(VerilensError, match="0..7"):
        ops.masked_glu(g, g, capture_neurons=[8])
    with pytest.raises(VerilensError, match="0..2"):
        ops.masked_glu(g, g, capture_positions=torch.tensor([[0], [5]]))
    with pytest.raises(VerilensError, match="NaN"):
        ops.masked_glu(g, g, scale=torch.full((8,), float("inf")))
    with pytest.raises(VerilensError, match="floating"):
        ops.masked_glu(g.long(), g.long())


def test_ops_import_does_not_need_triton():
    import subprocess
    import sys

    code = ("import sys; sys.modules['triton'] = None; import torch; from verilens import ops; "
            "z = torch.randn(1, 2, 4); print(ops.head_masked_o_proj(z, torch.randn(3, 4), n_heads=2).out.shape, "
            "ops.masked_glu(z, z).act.shape)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
