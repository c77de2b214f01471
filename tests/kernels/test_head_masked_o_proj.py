"""head_masked_o_proj: the Triton kernel against the torch reference (float64 oracle,
flash-attention style tolerance), the CPU dispatch against the plain model, and zero
ablation against editing hook_z by hand. In the interpreter on CPU: tiny shapes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import DEV, assert_close, poisoned, triton_or_skip

from verilens import ops
from verilens.errors import VerilensError
from verilens.kernels.head_masked_o_proj import head_masked_o_proj_ref

f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16


def _inputs(gen, B, P, H, dh, N, dtype, bias=False):
    z = torch.randn(B, P, H * dh, generator=gen)
    W = torch.randn(N, H * dh, generator=gen) / (H * dh) ** 0.5
    b = torch.randn(N, generator=gen) if bias else None
    cast = lambda t: None if t is None else t.to(DEV, dtype)  # noqa: E731
    return cast(z), cast(W), cast(b)


def _mask(kind, gen, B, P, H, dh):
    """(scale, fill, where) for a mask kind."""
    g = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    keep = torch.ones(H)
    keep[torch.randperm(H, generator=gen)[: max(1, H // 2)]] = 0
    return {
        "none": (None, None, None),
        "head01": (keep, None, None),  # per-head 0/1: the kernel skips dropped heads
        "head01_fill": (keep, torch.randn(H, dh, generator=gen), None),  # mean ablation
        "all_dropped": (torch.zeros(H), 0.5, None),
        "fractional": (g(H) * 1.5, None, None),  # scales applied in registers
        "per_position": ((g(B, P, H) > 0.4).float() * g(B, P, H) * 2, None, None),
        "where_fill": (keep, torch.randn(H, dh, generator=gen), g(B, P) > 0.5),
    }[kind]


def _oracle(z, W, b, H, scale, fill, where, pos):
    return head_masked_o_proj_ref(z.double().cpu(), W.double().cpu(), None if b is None else b.double().cpu(),
                                  n_heads=H, scale=scale, fill=fill, where=where,
                                  result_positions=None if pos is None else (pos if isinstance(pos, str) else pos.cpu()))


# (B, P, H, d_head, d_model, dtype, mask, capture, bias): odd positions 1/7/59/97, d_head
# 16/32/64 and 24 (K tail masked), d_model 48 (one tile) and 80 (two, ragged)
CASES = [
    (1, 1, 2, 16, 48, f32, "none", "all", False),
    (2, 7, 3, 32, 80, f16, "head01", "pos", False),
    (1, 59, 2, 64, 48, bf16, "head01_fill", "pos", False),
    (2, 97, 3, 16, 48, f32, "per_position", "pos", False),
    (2, 59, 3, 32, 48, f16, "fractional", "pos", True),
    (1, 97, 2, 64, 48, f16, "where_fill", None, False),
    (2, 7, 3, 24, 48, f32, "head01_fill", "pos", True),
    (2, 7, 4, 16, 48, bf16, "all_dropped", "pos", False),
    (1, 59, 3, 32, 80, bf16, "per_position", "all", True),
    (2, 59, 2, 16, 48, f16, "none", None, True),
]


KINDS = ["none", "head01", "head01_fill", "all_dropped", "fractional", "per_position", "where_fill"]
# every mask kind in every dtype at one odd shape (two ragged d_model tiles, capture on)
GRID = [(2, 59, 3, 32, 80, dt, kind, "pos", False) for dt in (f32, f16, bf16) for kind in KINDS]


@pytest.mark.parametrize("B,P,H,dh,N,dtype,kind,capture,bias", CASES + GRID)
def test_kernel_matches_reference(gen, B, P, H, dh, N, dtype, kind, capture, bias):
    triton_or_skip()
    from verilens.kernels.head_masked_o_proj import head_masked_o_proj_triton

    z, W, b = _inputs(gen, B, P, H, dh, N, dtype, bias)
    scale, fill, where = _mask(kind, gen, B, P, H, dh)
    pos = None
    if capture == "all":
        pos = "all"
    elif capture == "pos":  # repeats allowed, last position included
        pos = torch.randint(0, P, (B, 3), generator=gen)
        pos[:, -1] = P - 1
    K = P if capture == "all" else (3 if capture else 0)
    dev = lambda t: t.to(DEV) if isinstance(t, torch.Tensor) else t  # noqa: E731
    out_buf = poisoned((B, P, N), dtype)
    res_buf = poisoned((B, K, H, N), dtype) if capture else None
    out, res = head_masked_o_proj_triton(z, W, b, n_heads=H, scale=dev(scale), fill=dev(fill), where=dev(where),
                                         result_positions=dev(pos), out=out_buf, result=res_buf)
    assert out.data_ptr() == out_buf.data_ptr()
    low = head_masked_o_proj_ref(z, W, b, n_heads=H, scale=dev(scale), fill=dev(fill), where=dev(where),
                                 result_positions=dev(pos))
    oracle = _oracle(z, W, b, H, scale, fill, where, pos)
    assert_close(out, low.out, oracle.out, dtype, "out")
    if capture:
        assert res.shape == (B, K, H, N)
        assert_close(res, low.result, oracle.result, dtype, "result")
    else:
        assert res is None


def test_zero_ablation_equals_hand_edit_kernel(gen):
    """Zeroing heads via the kernel equals zeroing their slice of z by hand (then o_proj)."""
    triton_or_skip()
    from verilens.kernels.head_masked_o_proj import head_masked_o_proj_triton

    B, P, H, dh, N = 2, 7, 4, 16, 48
    z, W, _ = _inputs(gen, B, P, H, dh, N, f32)
    heads = [1, 3]
    zh = z.view(B, P, H, dh).clone()
    zh[:, :, heads] = 0
    hand = F.linear(zh.view(B, P, H * dh), W)
    scale = torch.ones(H)
    scale[heads] = 0
    out, _ = head_masked_o_proj_triton(z, W, n_heads=H, scale=scale, out=poisoned((B, P, N), f32))
    assert torch.allclose(out, hand, rtol=1e-5, atol=1e-5)
    # per position: only the last position of row 0 (a trigger firing on one row)
    where = torch.zeros(B, P, dtype=torch.bool)
    where[0, -1] = True
    zp = z.view(B, P, H, dh).clone()
    zp[0, -1, heads] = 0
    out, _ = head_masked_o_proj_triton(z, W, n_heads=H, scale=scale, where=where.to(DEV))
    assert torch.allclose(out, F.linear(zp.view(B, P, H * dh), W), rtol=1e-5, atol=1e-5)


# ---- the CPU dispatch: exactly the plain model's numbers ------------------------------
def test_dispatch_cpu_is_reference_and_plain_linear(gen):
    B, P, H, dh, N = 2, 5, 3, 8, 24
    z = torch.randn(B, P, H * dh, generator=gen)
    lin = torch.nn.Linear(H * dh, N, bias=True)
    with torch.no_grad():
        out, res = ops.head_masked_o_proj(z, lin.weight, lin.bias, n_heads=H)
        assert res is None
        assert torch.equal(out, lin(z))  # bit for bit
        pos = torch.tensor([[0, 4], [2, 2]])
        scale = torch.tensor([1.0, 0.0, 0.5])
        a = ops.head_masked_o_proj(z, lin.weight, lin.bias, n_heads=H, scale=scale, result_positions=pos)
        r = head_masked_o_proj_ref(z, lin.weight, lin.bias, n_heads=H, scale=scale, result_positions=pos)
        assert torch.equal(a.out, r.out) and torch.equal(a.result, r.result)
        # 4-D z and 2-D z give the same
        a4 = ops.head_masked_o_proj(z.view(B, P, H, dh), lin.weight, lin.bias, scale=scale)
        assert torch.equal(a4.out, a.out)
        a2 = ops.head_masked_o_proj(z[1], lin.weight, lin.bias, n_heads=H, scale=scale)
        assert a2.out.shape == (P, N)  # BLAS may block a single sequence differently: not bitwise
        assert torch.allclose(a2.out, a.out[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dispatch_zero_and_mean_ablation_equal_hand_edit_cpu(gen, dtype):
    B, P, H, dh, N = 2, 6, 4, 8, 16
    z = torch.randn(B, P, H, dh, generator=gen).to(dtype)
    W = torch.randn(N, H * dh, generator=gen).to(dtype)
    heads = [0, 2]
    scale = torch.ones(H)
    scale[heads] = 0
    hand = z.clone()
    hand[:, :, heads] = 0
    out, _ = ops.head_masked_o_proj(z, W, scale=scale, backend="torch")
    assert torch.equal(out, F.linear(hand.reshape(B, P, -1), W))
    mean = z.float().mean(dim=(0, 1))  # [H, dh]
    hand = z.clone()
    hand[:, :, heads] = mean[heads].to(dtype)
    out, _ = ops.head_masked_o_proj(z, W, scale=scale, fill=mean, backend="torch")
    assert torch.equal(out, F.linear(hand.reshape(B, P, -1), W))


def test_cpu_path_equals_model_and_runtime_hook_result():
    """On the real countdown-tiny model (fp32, CPU): the op reproduces o_proj's output
    exactly, a zeroed head equals the hand edit of hook_z through o_proj, and the
    per-head outputs equal the runtime's own hook_result computation."""
    import verilens
    from verilens.hooks.runtime import m_result

    model = verilens.load("countdown-tiny")
    cfg = model.cfg
    l = 2
    o_proj = model.blocks[l].self_attn.o_proj
    seen = {}
    h = o_proj.register_forward_hook(lambda m, a, out: seen.update(z=a[0].detach(), out=out.detach()))
    try:
        model(["3 5 7 = 15 <think>", "1 2 = 3"])
    finally:
        h.remove()
    z = seen["z"]
    B, P, _ = z.shape
    out, _ = ops.head_masked_o_proj(z, o_proj.weight, o_proj.bias, n_heads=cfg.n_heads)
    assert torch.equal(out, seen["out"])
    scale = torch.ones(cfg.n_heads)
    scale[1] = 0
    pos = torch.tensor([[P - 1, 0]] * B)
    out, res = ops.head_masked_o_proj(z, o_proj.weight, o_proj.bias, n_heads=cfg.n_heads, scale=scale,
                                      result_positions=pos)
    zh = z.view(B, P, cfg.n_heads, cfg.d_head).clone()
    zh[:, :, 1] = 0
    with torch.no_grad():
        assert torch.equal(out, o_proj(zh.view(B, P, -1)))
        assert torch.equal(res, m_result(model, l, zh, pos))


def test_bad_inputs():
    z = torch.randn(2, 3, 12)
    W = torch.randn(8, 12)
    with pytest.raises(VerilensError, match="n_heads"):
        ops.head_masked_o_proj(z, W)
    with pytest.raises(VerilensError, match="multiple of n_heads"):
        ops.head_masked_o_proj(z, W, n_heads=5)
    with pytest.raises(VerilensError, match="weight"):
        ops.head_masked_o_proj(z, torch.randn(8, 10), n_heads=3)
    with pytest.raises(VerilensError, match=r"scale must be \[n_heads\] = \[3\]"):
        ops.head_masked_o_proj(z, W, n_heads=3, scale=[1, 0])
    with pytest.raises(VerilensError, match=r"\[2, 3, 3\]"):
        ops.head_masked_o_proj(z, W, n_heads=3, scale=torch.ones(2, 4, 3))
    with pytest.raises(VerilensError, match="fill"):
        ops.head_masked_o_proj(z, W, n_heads=3, scale=[1, 0, 1], fill=torch.zeros(3, 5))
    with pytest.raises(VerilensError, match="needs a scale"):
        ops.head_masked_o_proj(z, W, n_heads=3, fill=1.0)
    with pytest.raises(VerilensError, match="0..2"):
        ops.head_masked_o_proj(z, W, n_heads=3, result_positions=torch.tensor([[0], [3]]))
    with pytest.raises(VerilensError, match="NaN"):
        ops.head_masked_o_proj(z, W, n_heads=3, scale=[1, float("nan"), 1])
    with pytest.raises(VerilensError, match="dtype"):
        ops.head_masked_o_proj(z, W.double(), n_heads=3)
    with pytest.raises(VerilensError, match="backend"):
        ops.head_masked_o_proj(z, W, n_heads=3, backend="cuda")
