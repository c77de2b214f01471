"""The hooked runtime on real checkpoints: countdown-tiny and SmolLM2-135M (pretrained)
equal Hugging Face's own forward and greedy generate."""
import pytest
import torch

import verilens
from verilens.countdown import Problem, prompt


def _parity(model, texts):
    ids, mask = model.tokenize(texts)
    ref = model.hf_model(input_ids=ids, attention_mask=mask, position_ids=model._position_ids(mask),
                         output_hidden_states=True)
    fired = set()
    logits, cache = model.run_with_cache(texts, names_filter=lambda n: "resid" in n)
    model.run_with_hooks(texts, fwd_hooks=[(lambda n: True, lambda x, hook: fired.add(hook.name))])
    assert len(fired) == len(verilens.hooks.names.all_names(model.cfg.n_layers))
    assert (logits - ref.logits).abs().max() <= 1e-5
    for l in range(model.cfg.n_layers):
        assert (cache["resid_pre", l] - ref.hidden_states[l]).abs().max() <= 1e-5
        if l + 1 < model.cfg.n_layers:
            assert (cache["resid_post", l] - ref.hidden_states[l + 1]).abs().max() <= 1e-5
    ids = model.to_tokens(texts[0])
    ours = model.generate(ids, max_new_tokens=16, stop_at_eos=False, cache_names=["blocks.0.hook_resid_post"]).tokens
    hf = model.hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                                 eos_token_id=None, pad_token_id=model.tokenizer.pad_token_id)
    assert torch.equal(ours, hf)


def test_countdown_tiny_parity():
    m = verilens.load("countdown-tiny")
    _parity(m, [prompt(Problem([12, 90, 60, 67], 49)), prompt(Problem([3, 5, 7], 8))])


@pytest.mark.slow
def test_smollm2_parity(smollm2_dir):
    m = verilens.load(smollm2_dir)
    assert m.cfg.n_kv_heads < m.cfg.n_heads  # GQA
    _parity(m, ["The capital of France is", "Interpretability research studies how neural networks compute"])
