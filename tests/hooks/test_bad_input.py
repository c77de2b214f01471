"""User mistakes raise a clear VerilensError before any compute and leave no hook attached."""
import dataclasses

import pytest
import torch

import verilens
from verilens.errors import VerilensError


def _installed(model):
    return {(id(m), k) for m in model.hf_model.modules() for d in (m._forward_hooks, m._forward_pre_hooks) for k in d}


@pytest.fixture
def clean(qwen):
    before = _installed(qwen)
    yield qwen
    assert _installed(qwen) == before
    assert not qwen._user_hooks() and not qwen._active


def test_unknown_hook_name_lists_closest(clean, texts):
    with pytest.raises(VerilensError, match="blocks.1.hook_resid_post"):
        clean.run_with_cache(texts, names_filter=["blocks.1.hook_resid_pots"])
    with pytest.raises(VerilensError, match="unknown hook name"):
        clean.run_with_hooks(texts, fwd_hooks=[("nonsense", lambda x, hook: None)])
    with pytest.raises(VerilensError, match="out of range"):
        clean.run_with_cache(texts, names_filter=["blocks.9.hook_resid_post"])
    # short aliases, as in TransformerLens: a misspelt one fails where it is written
    assert verilens.get_act_name("resid_post", 3) == "blocks.3.hook_resid_post"
    assert verilens.get_act_name("attn.hook_z", 1) == "blocks.1.attn.hook_z"
    assert verilens.get_act_name("embed") == "hook_embed"
    with pytest.raises(VerilensError, match="closest: resid_post"):
        verilens.get_act_name("resid_postt", 3)
    with pytest.raises(VerilensError, match="give a layer"):
        verilens.get_act_name("z")


@pytest.mark.parametrize("make, match", [
    (lambda: verilens.ablate_heads([(7, 0)]), "layer 7 out of range"),
    (lambda: verilens.ablate_heads([(0, 4)]), "head 4 out of range"),
    (lambda: verilens.ablate_heads([(0, 0)], mode="median"), "mode"),
    (lambda: verilens.ablate_neurons({1: [96]}), "out of range"),
    (lambda: verilens.ablate_neurons({-1: [0]}), "layer -1 out of range"),
    (lambda: verilens.project_out(torch.randn(63), layers=[0]), "width d_model = 64"),
    (lambda: verilens.steer(torch.randn(2, 64), layers=[0]), "one vector per layer"),
    (lambda: verilens.steer(torch.full((64,), float("nan")), layers=[0]), "NaN"),
    (lambda: verilens.steer(torch.randn(64), layers=[3]), "layer 3 out of range"),
    (lambda: verilens.patch("blocks.0.attn.hook_pattern", 0.0), "read-only"),
    (lambda: verilens.patch("blocks.0.hook_nope", 0.0), "unknown hook name"),
    # indices are integers, never rounded or parsed
    (lambda: verilens.ablate_heads([(1.5, 0)]), "layer must be an integer, got 1.5"),
    (lambda: verilens.ablate_heads([("a", 0)]), "layer must be an integer, got 'a'"),
    (lambda: verilens.ablate_heads([(True, 0)]), "must be an integer, got True"),
    (lambda: verilens.ablate_heads([(0, 1, 2)]), r"a \(layer, index\) pair"),
    (lambda: verilens.ablate_heads(["ab"]), r"a \(layer, index\) pair"),
    (lambda: verilens.ablate_neurons({1: [2.0]}), "index must be an integer, got 2.0"),
    (lambda: verilens.ablate_neurons({1: [0]}, positions=[1.5]), "positions must be an integer"),
    (lambda: verilens.steer(torch.randn(64), layers=[0.5]), "layer must be an integer"),
])
def test_bad_interventions_raise_before_compute(clean, make, match):
    calls = []
    h = clean.hf_model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(VerilensError, match=match):
            with clean.intervene(make()):
                clean("never run")
    finally:
        h.remove()
    assert not calls


def test_positions_past_the_sequence(clean, texts):
    n = clean.to_tokens(texts).shape[1]
    with pytest.raises(VerilensError, match="past the sequence"):
        clean.run_with_cache(texts, names_filter=["blocks.0.hook_resid_post"], positions=[[n]] * len(texts))
    with pytest.raises(VerilensError, match="past the end"):
        with clean.intervene(verilens.steer(torch.randn(64), layers=[0], positions=[n + 5])):
            clean(texts)
    with pytest.raises(VerilensError, match="same number of positions"):
        clean.run_with_cache(texts, names_filter=["blocks.0.hook_resid_post"], positions=[[1]])


def test_trigger_must_be_one_token(clean):
    with pytest.raises(VerilensError, match="exactly one"):
        with clean.intervene(verilens.ablate_heads([(0, 0)]), when=verilens.at_token("Assistant: Let me")):
            pass


def test_intervention_on_missing_component(qwen):
    no_glu = verilens.HookedModel(qwen.hf_model, qwen.tokenizer)
    no_glu.cfg = dataclasses.replace(no_glu.cfg, gated_mlp=False)
    with pytest.raises(VerilensError, match="GLU"):
        with no_glu.intervene(verilens.ablate_neurons({0: [1]})):
            pass
    with pytest.raises(VerilensError, match="GLU"):
        no_glu.W_gate


def test_hook_returning_wrong_shape(clean, texts):
    with pytest.raises(VerilensError, match="returned shape"):
        clean.run_with_hooks(texts, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x[:, :1])])
    with pytest.raises(VerilensError, match="reading only"):
        clean.run_with_hooks(texts, fwd_hooks=[("blocks.0.attn.hook_result", lambda x, hook: x * 0)])


def test_bad_input_types(clean):
    with pytest.raises(VerilensError):
        clean(3.5)
    with pytest.raises(VerilensError):
        clean([])
    with pytest.raises(VerilensError):
        clean.logit_lens(torch.randn(3, 10))


def test_empty_and_overlong_prompts(clean, texts):
    """An empty prompt is a VerilensError before transformers sees it; a sequence past the
    model's positions runs, with a warning that says so."""
    for bad in ("", [texts[0], ""], torch.zeros(1, 0, dtype=torch.long)):
        with pytest.raises(VerilensError, match="empty prompt|no tokens"):
            clean(bad)
    with pytest.raises(VerilensError, match="no tokens"):
        clean.generate(["", texts[0]], max_new_tokens=2)
    limit = clean.hf_model.config.max_position_embeddings
    with pytest.warns(UserWarning, match=f"max_position_embeddings = {limit}"):
        clean.generate(texts[0], max_new_tokens=limit)  # prompt + new > limit: warned before it runs
