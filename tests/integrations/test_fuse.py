"""verilens.fuse: the fused o_proj / GLU modules swapped into a Hugging Face model in
place; other tools' hooks keep firing; masks equal verilens' own ablations; unfuse gives
back the original modules bit for bit."""
import pytest
import torch

import verilens


def _logits(m, ids):
    with torch.no_grad():
        return m.hf_model(input_ids=ids).logits


def test_fuse_masks_equal_ablations_and_unfuse_restores(model, texts):
    ids = model.to_tokens(texts[0])
    hf = model.hf_model
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    classes = {n: type(m) for n, m in hf.named_modules()}
    clean = _logits(model, ids)
    seen = []
    handle = model.module(1, "o").register_forward_hook(lambda m, a, o: seen.append(o.shape))
    fused = verilens.fuse(hf)
    try:
        assert torch.equal(_logits(model, ids), clean)  # no mask: the model's own numbers
        assert seen, "a hook registered before fuse still fires"
        scale = torch.ones(model.cfg.n_heads)
        scale[[0, 2]] = 0
        fused.set_head_scale(1, scale)
        neurons = torch.ones(model.cfg.d_mlp)
        neurons[[3, 17]] = 0
        fused.set_neuron_scale(2, neurons)
        got = _logits(model, ids)
        fused.set_head_scale(1, None)
        fused.set_neuron_scale(2, None)
        assert torch.equal(_logits(model, ids), clean)
    finally:
        fused.unfuse()
        handle.remove()
    with model.intervene(verilens.ablate_heads([(1, 0), (1, 2)]),
                         verilens.ablate_neurons({2: [3, 17]}, positions="all")):
        want = model(ids)
    assert (got - want).abs().max() <= 1e-5 and (got - clean).abs().max() > 1e-4
    assert {n: type(m) for n, m in hf.named_modules()} == classes
    assert all(torch.equal(v, state[k]) for k, v in hf.state_dict().items())
    assert not any(k.startswith("verilens") for m in hf.modules() for k in vars(m))
    assert torch.equal(_logits(model, ids), clean)


def test_fuse_bad_input(model):
    with pytest.raises(verilens.VerilensError, match="Hugging Face causal LM"):
        verilens.fuse(torch.nn.Linear(2, 2))
    fused = verilens.fuse(model.hf_model)
    try:
        with pytest.raises(verilens.VerilensError, match="fused already"):
            verilens.fuse(model.hf_model)
        with pytest.raises(verilens.VerilensError, match="shape"):
            fused.set_head_scale(0, torch.ones(model.cfg.n_heads + 1))
        with pytest.raises(verilens.VerilensError, match="out of range"):
            fused.set_head_scale(model.cfg.n_layers, torch.ones(model.cfg.n_heads))
        with pytest.raises(verilens.VerilensError, match="NaN"):
            fused.set_neuron_scale(0, torch.full((model.cfg.d_mlp,), float("nan")))
    finally:
        fused.unfuse()
