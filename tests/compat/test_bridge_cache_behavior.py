# Ported from TransformerLens tests/integration/model_bridge/compatibility/test_bridge_cache_behavior.py
# (TransformerLensOrg/TransformerLens @ 4cd36aaeb5dad931d085bd5d46a12b402fe15272, v3.5.1-1).
# Changed: the model (TransformerLens: `bridge_compat`, distilgpt2 in a TransformerBridge; here
# the `model` fixture of tests/compat/conftest.py: a tiny random Llama and SmolLM2-135M), and
# the GPT-2 list EXPECTED_HOOKS without its two names a Llama HookedModel cannot have
# (hook_pos_embed, attn.hook_attn_scores; commented out in place).
# Not ported (see README.md): TestCacheCompleteness::test_expected_hooks_accessible_on_model
# (reaches hook points as module attributes, model.blocks[0].attn.hook_q: HookedModel's
# `blocks` are the Hugging Face decoder layers and its hook points live in model.hook_dict),
# TestCacheEqualityWithHookedTransformer::test_cache_values_match (bridge vs HookedTransformer).
import pytest
import torch


@pytest.fixture()
def bridge_compat(model):
    return model


EXPECTED_HOOKS = [
    "hook_embed",
    # "hook_pos_embed": no positional embedding on a Llama (RoPE)
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_resid_mid",
    "blocks.0.hook_resid_post",
    "blocks.0.ln1.hook_scale",
    "blocks.0.ln1.hook_normalized",
    "blocks.0.ln2.hook_scale",
    "blocks.0.ln2.hook_normalized",
    "blocks.0.attn.hook_q",
    "blocks.0.attn.hook_k",
    "blocks.0.attn.hook_v",
    "blocks.0.attn.hook_z",
    # "blocks.0.attn.hook_attn_scores": not a verilens hook point
    "blocks.0.attn.hook_pattern",
    # hook_result: gated by use_attn_result in bridge; unconditional in HT
    "blocks.0.mlp.hook_pre",
    "blocks.0.mlp.hook_post",
    "blocks.0.hook_attn_out",
    "blocks.0.hook_mlp_out",
    "ln_final.hook_scale",
    "ln_final.hook_normalized",
]


class TestCacheBasics:
    """Test basic cache functionality."""

    def test_run_with_cache_returns_nonempty(self, bridge_compat):
        """run_with_cache returns a non-empty cache."""
        with torch.no_grad():
            _, cache = bridge_compat.run_with_cache("Hello world")
        assert len(cache) > 0

    def test_cache_contains_residual_hooks(self, bridge_compat):
        """Cache should contain residual stream hooks."""
        with torch.no_grad():
            _, cache = bridge_compat.run_with_cache("Hello world")
        cache_keys = list(cache.keys())
        assert any("hook_resid" in k for k in cache_keys)

    def test_cache_values_are_tensors(self, bridge_compat):
        """All cached values should be tensors with correct batch dimension."""
        with torch.no_grad():
            _, cache = bridge_compat.run_with_cache("Hello")
        for key, value in cache.items():
            assert isinstance(value, torch.Tensor), f"Cache[{key}] is {type(value)}"
            assert value.shape[0] == 1, f"Cache[{key}] batch dim is {value.shape[0]}"


class TestCacheNamesFilter:
    """Test cache names filtering."""

    def test_names_filter_returns_subset(self, bridge_compat):
        """names_filter should return only matching keys."""
        with torch.no_grad():
            _, full_cache = bridge_compat.run_with_cache("Hello")
            _, filtered_cache = bridge_compat.run_with_cache(
                "Hello",
                names_filter=lambda name: "hook_resid_pre" in name,
            )

        assert len(filtered_cache) > 0
        assert len(filtered_cache) < len(full_cache)
        for key in filtered_cache:
            assert "hook_resid_pre" in key, f"Unexpected key: {key}"


class TestCacheCompleteness:
    """Test that cache contains all expected hooks."""

    def test_all_expected_hooks_in_cache(self, bridge_compat):
        """Cache should contain all expected hook names."""
        _, cache = bridge_compat.run_with_cache("Hello World!")
        actual_keys = set(cache.keys())
        missing = set(EXPECTED_HOOKS) - actual_keys
        assert len(missing) == 0, f"Missing expected hooks: {sorted(missing)}"
