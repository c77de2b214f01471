"""The hooked model runs head and neuron ablations through the fused kernels (on CUDA by
default; here forced with model.backend = "triton", in the interpreter) and gets the
numbers of the plain hook path (model.backend = "torch")."""
import pytest
import torch

import verilens
from verilens.hooks.interventions import at_token


@pytest.fixture
def model(model):
    """The session's random model; on a CUDA machine a copy of it on the GPU, where the
    kernels run compiled (the interpreter is only set up when there is no GPU)."""
    if not torch.cuda.is_available():
        return model
    import copy

    from verilens.hooks import HookedModel

    return HookedModel(copy.deepcopy(model.hf_model).to("cuda"), model.tokenizer, model.name)


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of the two Triton kernels, so a test knows the fused path ran."""
    import verilens.kernels.head_masked_o_proj as o
    import verilens.kernels.masked_glu as g

    calls = {"o_proj": 0, "glu": 0}

    def wrap(mod, fn_name, key):
        fn = getattr(mod, fn_name)

        def counted(*a, **k):
            calls[key] += 1
            return fn(*a, **k)
        monkeypatch.setattr(mod, fn_name, counted)

    wrap(o, "head_masked_o_proj_triton", "o_proj")
    wrap(g, "masked_glu_triton", "glu")
    return calls


def both(model, run):
    """run() with the hook path and with the fused kernels; always back to "auto"."""
    try:
        model.backend = "torch"
        ref = run()
        model.backend = "triton"
        got = run()
    finally:
        model.backend = "auto"
    assert not any("forward" in m.__dict__ for m in model.hf_model.modules()), "a forward override was left behind"
    return ref, got


@pytest.mark.parametrize("ivs", [
    lambda: [verilens.ablate_heads([(0, 1), (2, 3), (2, 0)])],
    lambda: [verilens.ablate_heads([(1, 2)], mode="mean", positions="last")],
    lambda: [verilens.ablate_neurons({1: [0, 5, 7], 2: [95]}, positions="all", value=0.5)],
    lambda: [verilens.ablate_heads([(0, 0)], positions=[3, 5]), verilens.ablate_neurons([(0, 3)], positions="last")],
], ids=["zero", "mean-last", "neurons", "heads+neurons"])
def test_fused_forward_equals_hook_path(model, texts, spy, ivs):
    def run():
        with model.intervene(*ivs()):
            return model(texts)

    ref, got = both(model, run)
    assert spy["o_proj"] + spy["glu"] > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert (got - model(texts)).abs().max() > 1e-3  # the ablation changed something


def test_fused_trigger_and_hook_result(model, texts, spy):
    # one row ends in " (" (the trigger fires there), the other does not
    rows = [texts[0] + " (", texts[1]]
    # (caching hook_z too would need the edited z itself: that pass takes the hook path)
    names = ["blocks.2.attn.hook_result", "blocks.2.hook_resid_post"]

    def run():
        with model.intervene(verilens.ablate_heads([(2, 1)], positions="last"), when=at_token(" (")):
            return model.run_with_cache(rows, names_filter=names, positions="last")

    (ref_logits, ref), (got_logits, got) = both(model, run)
    assert spy["o_proj"] > 0
    torch.testing.assert_close(got_logits, ref_logits, rtol=1e-4, atol=1e-4)
    for n in names:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-4)
    # the ablated head's output is zero only where the trigger fired
    assert got["blocks.2.attn.hook_result"][0, :, 1].abs().max() == 0
    assert got["blocks.2.attn.hook_result"][1, :, 1].abs().max() > 0


def test_fused_generate_equals_hook_path(model, texts, spy):
    def run():
        with model.intervene(verilens.ablate_heads([(1, 0), (2, 2)], positions="last"),
                             verilens.ablate_neurons({2: list(range(0, 96, 3))}, positions="last")):
            return model.generate(texts[:2], max_new_tokens=6).tokens

    ref, got = both(model, run)
    assert spy["o_proj"] > 0 and spy["glu"] > 0
    assert torch.equal(got, ref)


def test_kernels_setting_is_checked(model, texts):
    model.backend = "fast"
    try:
        with pytest.raises(verilens.VerilensError, match="model.backend"):
            with model.intervene(verilens.ablate_heads([(0, 0)])):
                model(texts)
    finally:
        model.backend = "auto"
    assert not any("forward" in m.__dict__ for m in model.hf_model.modules())
