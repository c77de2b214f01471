"""With no interventions the hooked model is Hugging Face's model, to the last bit;
hooks fire where they say; ablations equal the same edit made by hand."""
import pytest
import torch

import verilens
from verilens.hooks.names import LAYER_POINTS, all_names


def hf_forward(m, texts, **kw):
    ids, mask = m.tokenize(texts)
    out = m.hf_model(input_ids=ids, attention_mask=mask, position_ids=m._position_ids(mask), **kw)
    return ids, mask, out


def test_logits_and_residuals_equal_hf(model, texts):
    ids, mask, ref = hf_forward(model, texts, output_hidden_states=True)
    logits, cache = model.run_with_cache(texts, names_filter=lambda n: "resid" in n or n == "hook_embed")
    assert (logits - ref.logits).abs().max() <= 1e-5
    torch.testing.assert_close(cache["embed"], ref.hidden_states[0], rtol=0, atol=1e-5)
    for l in range(model.cfg.n_layers):
        # HF's last hidden state is after the final norm; compare resid_post before it
        if l < model.cfg.n_layers - 1:
            assert (cache["resid_post", l] - ref.hidden_states[l + 1]).abs().max() <= 1e-5
        assert (cache["resid_pre", l] - ref.hidden_states[l]).abs().max() <= 1e-5
    assert (model(texts) - ref.logits).abs().max() <= 1e-5


# Where each hook point lives in Hugging Face's own module tree, written out here per
# family (not read from verilens.hooks.arch), so the adapters are checked against it.
POST_NORM = {"gemma2", "gemma3_text"}


def _hf_points(model_type):
    attn_out = "post_attention_layernorm" if model_type in POST_NORM else "self_attn"
    mlp_out = "post_feedforward_layernorm" if model_type in POST_NORM else "mlp"
    return {"hook_resid_pre": ("", "in"), "attn.hook_q": ("self_attn.q_proj", "out"),
            "attn.hook_k": ("self_attn.k_proj", "out"), "attn.hook_v": ("self_attn.v_proj", "out"),
            "attn.hook_z": ("self_attn.o_proj", "in"), "hook_attn_out": (attn_out, "out"),
            "mlp.hook_pre": ("mlp.gate_proj", "out"), "mlp.hook_pre_linear": ("mlp.up_proj", "out"),
            "mlp.hook_post": ("mlp.down_proj", "in"), "hook_mlp_out": (mlp_out, "out"),
            "hook_resid_post": ("", "out")}


def test_every_hook_point_equals_hf_eager(model, texts):
    """Each hook point's activation is the input or output of the Hugging Face module it
    names, in an eager forward (fp32, <= 1e-5); resid_mid = resid_pre + attn_out."""
    hf, cfg = model.hf_model, model.hf_model.config
    points = _hf_points(cfg.model_type)
    seen, handles = {}, []

    def grab(key, where):
        def fn(mod, args, kwargs, out):
            x = (args[0] if args else next(iter(kwargs.values()))) if where == "in" else out
            seen[key] = (x[0] if isinstance(x, tuple) else x).detach().clone()
        return fn

    layers = hf.model.layers
    for l, layer in enumerate(layers):
        for point, (path, where) in points.items():
            mod = layer.get_submodule(path) if path else layer
            handles.append(mod.register_forward_hook(grab(f"blocks.{l}.{point}", where), with_kwargs=True))
    handles.append(hf.model.embed_tokens.register_forward_hook(grab("hook_embed", "out"), with_kwargs=True))
    handles.append(hf.model.norm.register_forward_hook(grab("ln_final", "out"), with_kwargs=True))
    old, cfg._attn_implementation = cfg._attn_implementation, "eager"
    try:
        _, _, ref = hf_forward(model, texts)
        seen = dict(seen)
        for h in handles:
            h.remove()
        handles = []
        logits, cache = model.run_with_cache(texts)
    finally:
        for h in handles:
            h.remove()
        cfg._attn_implementation = old
    assert (logits - ref.logits).abs().max() <= 1e-5
    # hook_normalized is before the norm's weight (TransformerLens' meaning)
    final = seen.pop("ln_final")
    assert (cache["ln_final.hook_normalized"] * model.final_norm_gain - final).abs().max() <= 1e-5
    for name, want in seen.items():
        got = cache[name]
        assert (got.reshape(want.shape) - want).abs().max() <= 1e-5, name
    for l in range(model.cfg.n_layers):
        mid = cache[f"blocks.{l}.hook_resid_pre"] + cache[f"blocks.{l}.hook_attn_out"]
        assert (cache[f"blocks.{l}.hook_resid_mid"] - mid).abs().max() <= 1e-5


def test_every_hook_fires(model, texts):
    fired = set()

    def guard(x, hook):
        fired.add(hook.name)
        assert torch.isfinite(x).all()

    model.run_with_hooks(texts, fwd_hooks=[(lambda n: True, guard)])
    assert fired == set(all_names(model.cfg.n_layers))


def test_cache_positions_and_shapes(model, texts):
    c = model.cfg
    _, full = model.run_with_cache(texts, names_filter=lambda n: True)
    pos = [[3, 7], [0, 5], [10, 2]]
    _, cache = model.run_with_cache(texts, names_filter=lambda n: True, positions=pos)
    b = len(texts)
    assert cache["resid_post", 1].shape == (b, 2, c.d_model)
    assert cache["z", 0].shape == (b, 2, c.n_heads, c.d_head)
    assert cache["k", 0].shape == (b, 2, c.n_kv_heads, c.d_head)
    assert cache["result", 2].shape == (b, 2, c.n_heads, c.d_model)
    assert cache["pattern", 2].shape[:3] == (b, c.n_heads, 2)
    assert cache["post", 1].shape == (b, 2, c.d_mlp)
    for name in ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "blocks.2.mlp.hook_post"]:
        for r in range(b):
            torch.testing.assert_close(cache[name][r], full[name][r, pos[r]])
    torch.testing.assert_close(cache["pattern", 2][0], full["pattern", 2][0][:, pos[0]])
    torch.testing.assert_close(cache["result", 2][1], full["result", 2][1, pos[1]])
    _, last = model.run_with_cache(texts, names_filter=["blocks.0.hook_resid_post"], positions="last", dtype=torch.float64)
    assert last["resid_post", 0].dtype == torch.float64 and last["resid_post", 0].shape == (b, 1, c.d_model)


def test_pattern_equals_eager_attention(model, texts):
    ids, mask = model.tokenize(texts)
    cfg = model.hf_model.config
    old = cfg._attn_implementation
    cfg._attn_implementation = "eager"
    try:
        ref = model.hf_model(input_ids=ids, attention_mask=mask, position_ids=model._position_ids(mask),
                             output_attentions=True)
    finally:
        cfg._attn_implementation = old
    pos = torch.tensor([[ids.shape[1] - 1, 40]] * len(texts))
    _, cache = model.run_with_cache(texts, names_filter=lambda n: n.endswith("hook_pattern"), positions=pos)
    for l in range(model.cfg.n_layers):
        want = ref.attentions[l][:, :, pos[0]]
        # compare real keys of real query positions (a pad query's row means nothing)
        real = mask.bool()[:, None, None, :] & mask.bool()[:, pos[0]][:, None, :, None]
        got = cache["pattern", l]
        assert (got - want).masked_fill(~real, 0).abs().max() <= 1e-5
        sums = got.sum(-1)[mask.bool()[:, pos[0]][:, None, :].expand(-1, got.shape[1], -1)]
        torch.testing.assert_close(sums, torch.ones_like(sums))


def test_results_sum_to_attn_out(model, texts):
    """Head results sum to o_proj's output; hook_attn_out is what the layer adds to the
    residual: that output, or (Gemma) its post-attention norm."""
    o_out = {}
    handles = [model.module(l, "o").register_forward_hook(lambda mod, a, out, l=l: o_out.__setitem__(l, out))
               for l in range(model.cfg.n_layers)]
    try:
        _, cache = model.run_with_cache(texts, names_filter=lambda n: "result" in n or "attn_out" in n)
    finally:
        for h in handles:
            h.remove()
    for l in range(model.cfg.n_layers):
        torch.testing.assert_close(cache["result", l].sum(2), o_out[l], atol=1e-5, rtol=1e-5)
        writes = model.module(l, "attn_out")
        want = o_out[l] if writes is model.module(l, "attn") else writes(o_out[l])
        torch.testing.assert_close(cache["attn_out", l], want, atol=1e-5, rtol=1e-5)


def test_weight_views_match_modules(model, texts):
    c = model.cfg
    assert model.W_Q.shape == (c.n_layers, c.n_heads, c.d_model, c.d_head)
    assert model.W_K.shape == (c.n_layers, c.n_heads, c.d_model, c.d_head)
    assert model.W_O.shape == (c.n_layers, c.n_heads, c.d_head, c.d_model)
    assert model.W_gate.shape == model.W_in.shape == (c.n_layers, c.d_model, c.d_mlp)
    assert model.W_out.shape == (c.n_layers, c.d_mlp, c.d_model)
    assert model.W_U.shape == (c.d_model, c.d_vocab) and model.W_E.shape == (c.d_vocab, c.d_model)
    lw = model.layer_weights(1)
    assert lw["W_Q"].data_ptr() == model.blocks[1].self_attn.q_proj.weight.data_ptr()  # a view
    x = torch.randn(5, c.d_model)
    attn = model.blocks[1].self_attn
    q = attn.q_proj(x).view(5, c.n_heads, c.d_head)
    bias = attn.q_proj.bias.view(c.n_heads, c.d_head) if attn.q_proj.bias is not None else 0
    torch.testing.assert_close(torch.einsum("nm,hmd->nhd", x, model.W_Q[1]) + bias, q, atol=1e-5, rtol=1e-5)
    v = attn.v_proj(x).view(5, c.n_kv_heads, c.d_head)
    vb = attn.v_proj.bias.view(c.n_kv_heads, c.d_head) if attn.v_proj.bias is not None else 0
    rep = c.n_heads // c.n_kv_heads
    torch.testing.assert_close((torch.einsum("nm,hmd->nhd", x, model.W_V[1]) + vb.repeat_interleave(rep, 0)
                                if torch.is_tensor(vb) else torch.einsum("nm,hmd->nhd", x, model.W_V[1])),
                               v.repeat_interleave(rep, 1), atol=1e-5, rtol=1e-5)
    z = torch.randn(5, c.n_heads, c.d_head)
    torch.testing.assert_close(torch.einsum("nhd,hdm->nm", z, model.W_O[1]), attn.o_proj(z.reshape(5, -1)),
                               atol=1e-5, rtol=1e-5)


def test_zero_ablating_head_equals_hand_edit(model, texts):
    layer, head, dh = 1, 2, model.cfg.d_head

    def by_hand(mod, args):
        x = args[0].clone()
        x[..., head * dh:(head + 1) * dh] = 0
        return (x,)

    h = model.blocks[layer].self_attn.o_proj.register_forward_pre_hook(by_hand)
    try:
        _, _, ref = hf_forward(model, texts)
    finally:
        h.remove()
    with model.intervene(verilens.ablate_heads([(layer, head)])):
        got = model(texts)
    assert (got - ref.logits).abs().max() <= 1e-5
    assert (got - model(texts)).abs().max() > 1e-4  # the head mattered


def test_ablating_neurons_equals_hand_edit(model, texts):
    layer, idx = 2, [1, 5, 17]

    def by_hand(mod, args):
        x = args[0].clone()
        x[:, -1, idx] = 0
        return (x,)

    h = model.blocks[layer].mlp.down_proj.register_forward_pre_hook(by_hand)
    try:
        _, _, ref = hf_forward(model, texts)
    finally:
        h.remove()
    with model.intervene(verilens.ablate_neurons({layer: idx}, positions="last")):
        got = model(texts)
    assert (got - ref.logits).abs().max() <= 1e-5
    assert (got[:, -1] - model(texts)[:, -1]).abs().max() > 0


def test_project_out_steer_patch(model, texts):
    d = torch.randn(2, model.cfg.d_model)
    with model.intervene(verilens.project_out(d, layers=[1])):
        _, cache = model.run_with_cache(texts, names_filter=["blocks.1.hook_resid_post"])
    proj = cache["resid_post", 1] @ torch.linalg.qr(d.T).Q
    assert proj.abs().max() < 1e-4
    v = torch.randn(model.cfg.d_model)
    _, base = model.run_with_cache(texts, names_filter=["blocks.0.hook_resid_post"])
    with model.intervene(verilens.steer(v, layers=0, alpha=3.0, positions="last")):
        _, cache = model.run_with_cache(texts, names_filter=["blocks.0.hook_resid_post"])
    diff = cache["resid_post", 0] - base["resid_post", 0]
    torch.testing.assert_close(diff[:, -1], (3.0 * v).expand(len(texts), -1))
    assert diff[:, :-1].abs().max() == 0
    with model.intervene(verilens.patch("blocks.1.hook_resid_mid", 0.0)):
        _, cache = model.run_with_cache(texts, names_filter=["blocks.1.hook_resid_mid", "blocks.1.hook_resid_post",
                                                      "blocks.1.hook_mlp_out"])
    assert cache["resid_mid", 1].abs().max() == 0
    assert (cache["resid_post", 1] - cache["mlp_out", 1]).abs().max() < 1e-5


def test_hooks_removed_even_when_body_raises(model, texts):
    def boom(x, hook):
        raise RuntimeError("boom")

    def installed():  # transformers keeps hooks of its own once hidden states were requested
        return {(id(m), k) for m in model.hf_model.modules() for d in (m._forward_hooks, m._forward_pre_hooks) for k in d}

    before = installed()
    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(texts, fwd_hooks=[("blocks.1.attn.hook_z", boom)])
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks([("blocks.0.hook_resid_post", boom)]):
            model(texts)
    with pytest.raises(ValueError):
        with model.intervene(verilens.ablate_heads([(0, 0)])):
            raise ValueError
    assert installed() == before
    assert not model._user_hooks() and not model._active


def test_hooks_context_manager(model, texts):
    seen = []
    with model.hooks([("blocks.0.hook_resid_post", lambda x, hook: seen.append(hook.name))]):
        model(texts)
        model(texts)
    model(texts)
    assert seen == ["blocks.0.hook_resid_post"] * 2


def test_layer_points_are_in_forward_order(model, texts):
    order = []
    model.run_with_hooks(texts, fwd_hooks=[(lambda n: n.startswith("blocks.1."), lambda x, hook: order.append(hook.name))])
    assert [n.split("blocks.1.")[1] for n in order] == list(LAYER_POINTS)
