"""Probes, GLU selection, target-attention density and the logit lens."""
import pytest
import torch

from verilens.analysis import (load_probe, save_probe, script_of, select_heads, select_variant_a, select_variant_b,
                               target_attention_density, top_tokens, train_probes, upper_half,
                               value_vector_cosines)
from verilens.analysis.heads import target_key_positions
from verilens.countdown import Problem, prompt, write_trace
from verilens.errors import VerilensError


def _planted(n_gen=60, per_gen=4, L=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(L, d, generator=g)
    labels = torch.randint(0, 2, (n_gen * per_gen,), generator=g)
    acts = torch.randn(n_gen * per_gen, L, d, generator=g)
    acts += (2 * labels[:, None, None] - 1) * direction[None] * 1.5
    gen = torch.arange(n_gen).repeat_interleave(per_gen)
    return acts, labels, gen


def test_probe_learns_planted_direction_and_round_trips(tmp_path):
    acts, labels, gen = _planted()
    res = train_probes(acts, labels, gen, seed=0, lr=1e-2, patience=10)
    assert res.W.shape == (3, 16, 2) and res.W.dtype == torch.float32
    assert min(res.val_accuracy) > 0.9
    assert res.n_val + res.n_train == 60
    save_probe(res.W, tmp_path / "probe.pt")
    torch.testing.assert_close(load_probe(tmp_path / "probe.pt"), res.W)
    same = train_probes(acts, labels, gen, seed=0, lr=1e-2, patience=10)
    torch.testing.assert_close(same.W, res.W)  # deterministic for a seed


def test_probe_bad_inputs(tmp_path, qwen):
    acts, labels, gen = _planted()
    with pytest.raises(VerilensError, match="both valid and invalid"):
        train_probes(acts, torch.zeros_like(labels), gen)
    with pytest.raises(VerilensError, match="one label"):
        train_probes(acts, labels[:-1], gen)
    torch.save(torch.zeros(3, 16, 3), tmp_path / "bad.pt")
    with pytest.raises(VerilensError, match=r"\[n_layers, d_model, 2\]"):
        load_probe(tmp_path / "bad.pt")
    torch.save(torch.zeros(5, 64, 2), tmp_path / "other.pt")
    with pytest.raises(VerilensError, match="does not fit"):
        load_probe(tmp_path / "other.pt", model=qwen)
    (tmp_path / "junk.pt").write_text("not a tensor")
    with pytest.raises(VerilensError, match="not a probe file"):
        load_probe(tmp_path / "junk.pt")
    with pytest.raises(VerilensError, match="not found"):
        load_probe(tmp_path / "missing.pt")
    nan = torch.zeros(3, 16, 2)
    nan[1, 4, 0] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    with pytest.raises(VerilensError, match=r"layers \[1\] hold NaN or inf"):
        load_probe(tmp_path / "nan.pt")
    torch.save(torch.zeros(3, 16, 2, dtype=torch.long), tmp_path / "int.pt")
    with pytest.raises(VerilensError, match="floating-point"):
        load_probe(tmp_path / "int.pt")


def test_glu_selection(qwen):
    L, d, m = qwen.cfg.n_layers, qwen.cfg.d_model, qwen.cfg.d_mlp
    W = torch.randn(L, d, 2)
    assert upper_half(36) == list(range(18, 36)) and upper_half(3) == [1, 2]
    cos = value_vector_cosines(qwen, W[2, :, 1])
    V = qwen.blocks[1].mlp.down_proj.weight
    torch.testing.assert_close(cos[1, 7], torch.nn.functional.cosine_similarity(V[:, 7], W[2, :, 1], dim=0))
    a = select_variant_a(qwen, W, layers=[1, 2], label=1, top_k=5)
    assert len(a) == 10 and all(l in (1, 2) for l, _ in a)
    top2 = torch.topk(value_vector_cosines(qwen, W[2, :, 1], [2])[0], 5).indices.tolist()
    assert [i for l, i in a if l == 2] == top2
    both = select_variant_a(qwen, W, layers=[2], label=(0, 1), top_k=5)
    assert len(both) == 10
    b = select_variant_b(qwen, W, layers=[1, 2], top_k=5, top_n=12)
    assert len(b) == 12 and len({(l, i) for l, i, _ in b}) == 12
    assert [c for *_, c in b] == sorted([c for *_, c in b], reverse=True)
    assert all(l <= 2 for l, _, _ in b)


def test_target_density(qwen):
    p = Problem([12, 90, 60, 67], 49)
    full = prompt(p) + write_trace(p, 0)
    context = full[: full.index(" (this works)")]
    keys = target_key_positions(qwen, context, 49)
    toks = qwen.to_str_tokens(context)
    assert len(keys) >= 4 and all(toks[k] in ("4", "9") for k in keys)  # digits of 49, prompt and think
    dens = target_attention_density(qwen, [context, context[:-3]], [49, 49])
    assert dens.shape == (qwen.cfg.n_layers, qwen.cfg.n_heads)
    assert ((dens >= 0) & (dens <= 1)).all()
    _, cache = qwen.run_with_cache(context, names_filter=["blocks.1.attn.hook_pattern"], positions="last")
    one = target_attention_density(qwen, [context], [49])
    torch.testing.assert_close(one[1], cache["pattern", 1][0, :, 0, keys].sum(-1))
    heads = select_heads(dens, threshold=0.0, top_k=3)
    assert len(heads) == 3 and dens[heads[0]] >= dens[heads[1]] >= dens[heads[2]]
    with pytest.raises(VerilensError, match="does not occur"):
        target_attention_density(qwen, [context], [77])


def test_logit_lens_and_scripts(qwen):
    assert script_of(" success") == "latin" and script_of("成功") == "cjk" and script_of("不") == "cjk"
    assert script_of(" 49") == "other" and script_of("nicht") == "latin" and script_of("≠") == "other"
    out = top_tokens(qwen, torch.randn(qwen.cfg.d_model), k=10)
    assert len(out["tokens"]) == 10 and abs(sum(out["script_share"].values()) - 1) < 1e-9
    logits = [t["logit"] for t in out["tokens"]]
    assert logits == sorted(logits, reverse=True)
