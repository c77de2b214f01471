# Ported from TransformerLens tests/acceptance/model_bridge/compatibility/test_backward_hooks.py
# (TransformerLensOrg/TransformerLens @ 4cd36aaeb5dad931d085bd5d46a12b402fe15272, v3.5.1-1).
# Changed: the model (TransformerLens: GPT-2 unprocessed, as HookedTransformer and as
# TransformerBridge; here the `model` fixture of tests/compat/conftest.py: a tiny random Llama
# and SmolLM2-135M). test_transformer_bridge_hooks_context_cleans_up_backward_hooks runs the
# same check on TransformerLens's two model classes; with one model it runs once.
# `model.blocks[0].hook_resid_post` is `model.hook_dict["blocks.0.hook_resid_post"]`
# (HookedModel's `blocks` are the Hugging Face decoder layers).
# Not ported (see README.md): TestBackwardHookCompatibility::
# test_backward_hook_gradients_match_hooked_transformer (bridge vs HookedTransformer; skipped
# in TransformerLens itself).
import torch


def test_transformer_bridge_hooks_context_cleans_up_backward_hooks(model):
    """Regression test for backward-hook cleanup on context exit."""
    bridge_model = model
    bridge_hook = bridge_model.hook_dict["blocks.0.hook_resid_post"]
    test_input = torch.tensor([[1, 2, 3]])

    def noop_backward_hook(grad, hook=None):
        return None

    bridge_model.zero_grad()
    with bridge_model.hooks(bwd_hooks=[("blocks.0.hook_resid_post", noop_backward_hook)]):
        bridge_model(test_input).sum().backward()
    assert not bridge_hook.has_hooks(dir="bwd", including_permanent=False)


def test_transformer_bridge_reset_hooks_removes_backward_hooks(model):
    """Regression test for bridge reset_hooks removing backward hooks."""
    bridge_model = model
    backward_hook = bridge_model.hook_dict["blocks.0.hook_resid_post"]
    backward_hook.add_hook(lambda grad, hook=None: None, dir="bwd")
    assert backward_hook.has_hooks(dir="bwd", including_permanent=False)
    bridge_model.reset_hooks()
    assert not backward_hook.has_hooks(dir="bwd", including_permanent=False)
