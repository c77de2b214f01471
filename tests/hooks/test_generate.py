"""Generation: equal to Hugging Face's greedy generate, and exact under the KV cache with
interventions: every step equals a full recomputed forward with the same intervention."""
import pytest
import torch

import verilens
from verilens.errors import VerilensError


def test_greedy_equals_hf_generate(model, texts):
    for t in texts:
        ids = model.to_tokens(t)
        ours = model.generate(ids, max_new_tokens=24, stop_at_eos=False)
        ref = model.hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                                      eos_token_id=None, pad_token_id=model.tokenizer.pad_token_id)
        assert torch.equal(ours, ref)


def test_batched_left_padding_equals_single(model, texts):
    batch = model.generate(texts, max_new_tokens=16, stop_at_eos=False)
    assert isinstance(batch, list) and len(batch) == len(texts)
    for t, out in zip(texts, batch):
        single = model.generate(t, max_new_tokens=16, stop_at_eos=False)
        assert isinstance(single, str) and single == out and out.startswith(t)


def _reference_generate(model, ids, steps, make_interventions, trigger_id):
    """No cache: each step is a full forward; the interventions apply iff the last
    token is the trigger."""
    ids = ids.clone()
    for _ in range(steps):
        if ids[0, -1] == trigger_id:
            with model.intervene(*make_interventions()):
                logits = model(ids)
        else:
            logits = model(ids)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


def _trigger_text(model, ids, steps):
    """A token the model generates a few times, to use as the trigger."""
    plain = model.generate(ids, max_new_tokens=steps, stop_at_eos=False)[0, ids.shape[1]:]
    counts = torch.bincount(plain)
    tid = int(counts.argmax())
    assert counts[tid] >= 2
    return model.tokenizer.decode([tid]), tid


@pytest.mark.parametrize("make", [
    lambda: [verilens.ablate_heads([(0, 1), (2, 3)])],
    lambda: [verilens.ablate_neurons({1: [0, 3, 9]}, positions="last")],
    lambda: [verilens.steer(torch.ones(64), layers=[1], alpha=5.0, positions="last"),
             verilens.ablate_neurons({2: [4]}, positions="last")],
    lambda: [verilens.project_out(torch.ones(64), layers=[0, 2])],
], ids=["heads-all-positions", "neurons-last", "steer+neurons-last", "project-out-all"])
def test_trigger_under_kv_cache_equals_full_recompute(qwen, texts, make):
    ids = qwen.to_tokens(texts[0])
    steps = 20
    text, tid = _trigger_text(qwen, ids, steps)
    if len(qwen.tokenizer.encode(text, add_special_tokens=False)) != 1:
        pytest.skip("trigger token does not round-trip")
    with qwen.intervene(*make(), when=verilens.at_token(text)):
        ours = qwen.generate(ids, max_new_tokens=steps, stop_at_eos=False)
    ref = _reference_generate(qwen, ids, steps, make, tid)
    assert torch.equal(ours, ref)


def test_always_on_intervention_equals_full_recompute(qwen, texts):
    ids = qwen.to_tokens(texts[2])
    make = lambda: [verilens.ablate_heads([(1, 0)])]  # noqa: E731
    with qwen.intervene(*make()):
        ours = qwen.generate(ids, max_new_tokens=12, stop_at_eos=False)
        ref = ids.clone()
        for _ in range(12):
            ref = torch.cat([ref, qwen(ref)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(ours, ref)
    # last-position-only interventions, on at every step: still a full recompute per step
    with qwen.intervene(verilens.ablate_neurons({0: list(range(40))}, positions="last")):
        ours = qwen.generate(ids, max_new_tokens=12, stop_at_eos=False)
        ref = ids.clone()
        for _ in range(12):
            ref = torch.cat([ref, qwen(ref)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(ours, ref)


def test_cache_during_generation(qwen, texts):
    ids = qwen.to_tokens(texts[0])
    out, cache = qwen.generate(ids, max_new_tokens=6, stop_at_eos=False,
                               cache_names=["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"])
    assert cache["resid_post", 1].shape == (1, 6, qwen.cfg.d_model)
    _, full = qwen.run_with_cache(out[:, :-1], names=["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"])
    p = ids.shape[1]
    torch.testing.assert_close(cache["resid_post", 1][0], full["resid_post", 1][0, p - 1:], atol=1e-5, rtol=1e-5)
    pat = cache["pattern", 0]  # [b, new, head, keys so far] -> compare the last step's row
    torch.testing.assert_close(pat[0, -1], full["pattern", 0][0, :, -1], atol=1e-5, rtol=1e-5)


def test_stop_strings_and_sampling(qwen, texts):
    plain = qwen.generate(texts[0], max_new_tokens=20, stop_at_eos=False)
    cont = plain[len(texts[0]):]
    stop = cont[5:8]
    stopped = qwen.generate(texts[0], max_new_tokens=20, stop=stop, stop_at_eos=False)
    assert stopped.endswith(stop) and len(stopped) < len(plain) and plain.startswith(stopped)
    a = qwen.generate(texts[0], max_new_tokens=10, do_sample=True, temperature=2.0, seed=7)
    b = qwen.generate(texts[0], max_new_tokens=10, do_sample=True, temperature=2.0, seed=7)
    c = qwen.generate(texts[0], max_new_tokens=10, do_sample=True, temperature=2.0, seed=8, top_k=5, top_p=0.9)
    assert a == b and isinstance(c, str)


def test_bad_generation_input(qwen):
    with pytest.raises(VerilensError):
        qwen.generate(123)
    with pytest.raises(VerilensError):
        qwen.generate("x", max_new_tokens=-1)
