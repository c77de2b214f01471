"""Probe transfer between models (ridge map on unembedding rows, proportional layers)."""
import pytest
import torch

from verilens.analysis.transfer import layer_map, transfer_probe
from verilens.errors import VerilensError
from verilens.hooks import HookedModel


def test_layer_map_is_the_papers():
    assert [layer_map(L, 36, 48) for L in (0, 17, 35)] == [0, 22, 46]
    assert layer_map(5, 6, 6) == 5


def _model(small_tokenizer, layers, d, seed):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    tok = small_tokenizer
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.eos_token_id)
    return HookedModel(Qwen2ForCausalLM(cfg).eval(), tok, f"m{layers}x{d}")


def test_transfer_recovers_a_linear_relation(small_tokenizer):
    """When B's unembedding is A's times a fixed matrix R, the ridge map ~ R, so the
    transferred probe is W R; layers follow the proportional map."""
    a = _model(small_tokenizer, 3, 32, 0)
    b = _model(small_tokenizer, 6, 48, 1)
    R = torch.randn(32, 48) / 32 ** 0.5
    with torch.no_grad():
        b.hf_model.lm_head.weight.copy_(a.hf_model.lm_head.weight @ R)
    W = torch.randn(3, 32, 2)
    Wt = transfer_probe(W, a, b, alpha=1e-6)
    assert Wt.shape == (6, 48, 2)
    for lt in range(6):
        ls = max(L for L in range(3) if layer_map(L, 3, 6) <= lt)
        torch.testing.assert_close(Wt[lt], torch.einsum("dc,de->ec", W[ls], R), atol=2e-3, rtol=2e-3)


def test_transfer_rejects_a_probe_of_the_wrong_shape(small_tokenizer):
    a = _model(small_tokenizer, 3, 32, 0)
    with pytest.raises(VerilensError, match="probe must be"):
        transfer_probe(torch.randn(2, 32, 2), a, a)
