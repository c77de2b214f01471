"""TransformerLens' HookedRootModule / ActivationCache API on HookedModel, checked against
independent computations on the native Hugging Face model (TransformerLens' own tests,
ported, are in tests/compat/)."""
import pytest
import torch

import verilens


def _rms(x, eps):
    return torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def test_norm_points_have_transformer_lens_meaning(model, texts):
    """hook_scale = sqrt(mean(x^2) + eps) of the norm's input; hook_normalized = x / scale
    (before the weight), and the Hugging Face norm's output is weight * normalized."""
    hf_out, handles = {}, []
    for l in range(model.cfg.n_layers):
        for ln in ("ln1", "ln2"):
            handles.append(model.module(l, ln).register_forward_hook(
                lambda m, a, o, key=f"blocks.{l}.{ln}": hf_out.__setitem__(key, o.detach())))
    handles.append(model.final_norm.register_forward_hook(lambda m, a, o: hf_out.__setitem__("ln_final", o.detach())))
    try:
        _, cache = model.run_with_cache(texts)
    finally:
        for h in handles:
            h.remove()
    n = model.cfg.n_layers
    inputs = {**{f"blocks.{l}.ln1": cache["resid_pre", l] for l in range(n)},
              **{f"blocks.{l}.ln2": cache["resid_mid", l] for l in range(n)}, "ln_final": cache["resid_post", n - 1]}
    for prefix, x in inputs.items():
        norm = model.final_norm if prefix == "ln_final" else model.module(int(prefix.split(".")[1]), prefix[-3:])
        eps = model.arch.norm_eps(norm)
        scale, normalized = cache[f"{prefix}.hook_scale"], cache[f"{prefix}.hook_normalized"]
        torch.testing.assert_close(scale, _rms(x, eps), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(normalized, x / _rms(x, eps), rtol=1e-5, atol=1e-5)
        gain = model.arch.norm_gain(norm).detach()
        assert (hf_out[prefix] - normalized * gain).abs().max() <= 1e-5, prefix


def test_norm_hooks_change_the_output_like_a_hand_edit(model, texts):
    """Doubling ln_final's scale halves what the norm writes; hooks that return their input
    leave the logits bit for bit."""
    clean = model(texts)
    same = model.run_with_hooks(texts, fwd_hooks=[(lambda n: n.endswith(("hook_scale", "hook_normalized")),
                                                   lambda x, hook: x)])
    assert torch.equal(same, clean)
    edited = model.run_with_hooks(texts, fwd_hooks=[("ln_final.hook_scale", lambda x, hook: x * 2)])
    h = model.final_norm.register_forward_hook(lambda m, a, o: o / 2)
    try:
        want = model(texts)
    finally:
        h.remove()
    assert (edited - want).abs().max() <= 1e-5 and (edited - clean).abs().max() > 1e-3


def test_loss_equals_hf_labels_loss(model, texts):
    ids, mask = model.tokenize(texts[:1])
    ref = model.hf_model(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(model(texts[:1], return_type="loss"), ref, rtol=1e-5, atol=1e-6)
    logits, loss = model(texts[:1], return_type="both")
    assert logits.shape[:2] == ids.shape and loss.dim() == 0
    per = model(texts[:1], return_type="loss", loss_per_token=True)
    assert per.shape == (1, ids.shape[1] - 1)
    torch.testing.assert_close(per.mean(), ref, rtol=1e-5, atol=1e-6)
    assert model(texts[:1], return_type=None) is None
    with pytest.raises(verilens.VerilensError, match="return_type"):
        model(texts[:1], return_type="probs")


def test_backward_hook_sees_the_autograd_gradient(model, texts):
    """A bwd hook on resid_post gets d loss / d resid_post, as torch.autograd computes it
    on the native model; returning a tensor replaces the gradient flowing back."""
    seen = {}
    model.add_hook("blocks.1.hook_resid_post", lambda g, hook: seen.__setitem__("g", g.clone()), dir="bwd")
    try:
        loss = model(texts[:1], return_type="loss")
        loss.backward()
    finally:
        model.reset_hooks()
    ids, _ = model.tokenize(texts[:1])
    grabbed = {}
    block = model.blocks[1]
    h = block.register_forward_hook(lambda m, a, o: (o[0] if isinstance(o, tuple) else o).retain_grad()
                                    or grabbed.__setitem__("x", o[0] if isinstance(o, tuple) else o))
    try:
        for p in model.hf_model.parameters():
            p.grad = None
        model.hf_model(input_ids=ids, labels=ids).loss.backward()
    finally:
        h.remove()
    assert (seen["g"] - grabbed["x"].grad).abs().max() <= 1e-6
    # a hook that zeroes the gradient at layer 1 stops every gradient of layers 0-1's weights
    for p in model.hf_model.parameters():
        p.grad = None
    model.run_with_hooks(texts[:1], bwd_hooks=[("blocks.1.hook_resid_post", lambda g, hook: torch.zeros_like(g))],
                         reset_hooks_end=False, return_type="loss").backward()
    model.reset_hooks()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.blocks[0].parameters())
    assert model.module(2, "down").weight.grad.abs().max() > 0


def test_hook_state_levels_permanence_and_order(model, texts):
    calls = []
    model.add_perma_hook("hook_embed", lambda x, hook: calls.append("perma"))
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: calls.append("outer"))]):
        with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: calls.append("inner"))]):
            model.add_hook("hook_embed", lambda x, hook: calls.append("first"), prepend=True)
            assert len(model.hook_dict["hook_embed"].fwd_hooks) == 4
            model(texts[:1])
        assert len(model.hook_dict["hook_embed"].fwd_hooks) == 3  # the prepended one had no level
    model.reset_hooks()
    assert [h.is_permanent for h in model.hook_dict["hook_embed"].fwd_hooks] == [True]
    model.reset_hooks(including_permanent=True)
    assert calls == ["first", "perma", "outer", "inner"]
    assert not any(hp.fwd_hooks for hp in model.hook_points())


def test_hook_object_layer_name_and_ctx(model, texts):
    seen = []

    def fn(x, hook):
        hook.ctx["n"] = hook.ctx.get("n", 0) + 1
        seen.append((hook.name, hook.layer(), hook.ctx["n"]))

    model.add_hook(lambda n: n.endswith("attn.hook_z"), fn)
    model(texts[:1])
    model(texts[:1])
    assert seen[-1] == (f"blocks.{model.cfg.n_layers - 1}.attn.hook_z", model.cfg.n_layers - 1, 2)
    model.reset_hooks()  # clears the contexts too
    assert model.hook_dict["blocks.0.attn.hook_z"].ctx == {}


def test_pos_slice_and_batch_dim(model, texts):
    _, full = model.run_with_cache(texts, names_filter=["blocks.0.hook_resid_post", "blocks.0.attn.hook_z"])
    _, last = model.run_with_cache(texts, names_filter=["blocks.0.hook_resid_post", "blocks.0.attn.hook_z"],
                                   pos_slice=-1)
    # an int keeps the position axis (TransformerLens' Slice.unwrap turns i into [i])
    assert torch.equal(last["resid_post", 0], full["resid_post", 0][:, -1:])
    assert torch.equal(last["z", 0], full["z", 0][:, -1:])
    _, some = model.run_with_cache(texts, names_filter="blocks.0.hook_resid_post", pos_slice=(2, 5))
    assert torch.equal(some["resid_post", 0], full["resid_post", 0][:, 2:5])
    _, one = model.run_with_cache(texts[0], names_filter="blocks.0.hook_resid_post", remove_batch_dim=True)
    assert not one.has_batch_dim and one["resid_post", 0].dim() == 2
    sliced = full.apply_slice_to_batch_dim(1)
    assert not sliced.has_batch_dim and torch.equal(sliced["resid_post", 0], full["resid_post", 0][1])
    with pytest.raises(verilens.VerilensError, match="batch of one"):
        model.run_with_cache(texts, remove_batch_dim=True)


def test_run_with_cache_incl_bwd(model, texts):
    loss, cache = model.run_with_cache(texts[:1], names_filter=lambda n: n.endswith("resid_post"), incl_bwd=True,
                                       return_type="loss")
    n = model.cfg.n_layers
    assert cache[f"blocks.{n - 1}.hook_resid_post_grad"].shape == cache["resid_post", n - 1].shape
    assert cache["blocks.0.hook_resid_post_grad"].abs().max() > 0
    model.hf_model.zero_grad()


def test_cache_decompositions_add_up(model, texts):
    if model.cfg.post_norms:
        pytest.skip("Gemma's post-norms: head results do not add up to attn_out")
    n = model.cfg.n_layers
    logits, cache = model.run_with_cache(texts)
    resid = cache["resid_post", n - 1]
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[0] == "embed" and len(labels) == 1 + 2 * n
    assert (parts.sum(0) - resid).abs().max() <= 1e-4
    stack, labels = cache.accumulated_resid(return_labels=True, incl_mid=True)
    assert labels[-1] == "final_post" and torch.equal(stack[-1], resid)
    heads, labels = cache.stack_head_results(incl_remainder=True, return_labels=True)
    assert heads.shape[0] == n * model.cfg.n_heads + 1 and labels[-1] == "remainder"
    assert (heads.sum(0) - resid).abs().max() <= 1e-4
    full, labels = cache.get_full_resid_decomposition(return_labels=True)
    assert len(labels) == n * (model.cfg.n_heads + model.cfg.d_mlp) + 2
    assert (full.sum(0) - resid).abs().max() <= 1e-3
    # direct logit attribution: the components' attributions add up to the logits
    ids, _ = model.tokenize(texts)
    attrs = cache.logit_attrs(full, ids)
    want = logits.gather(-1, ids[..., None])[..., 0]
    if model.cfg.final_softcap is None:
        assert (attrs.sum(0) - want).abs().max() <= 1e-3
    lens = cache.accumulated_resid(apply_ln=True)
    assert (lens[-1] @ model.W_U - logits).abs().max() <= 1e-4 or model.cfg.final_softcap is not None
