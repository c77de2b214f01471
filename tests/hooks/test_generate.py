"""Generation: equal to Hugging Face's greedy generate, and exact under the KV cache with
interventions: every step equals a full recomputed forward with the same intervention."""
import pytest
import torch

import verilens
from verilens.errors import VerilensError


def test_greedy_equals_hf_generate(model, texts):
    """verilens' own decoding loop (here run because something is cached) and the plain
    call (handed to Hugging Face's loop) both give Hugging Face's greedy tokens."""
    for t in texts:
        ids = model.to_tokens(t)
        own = model.generate(ids, max_new_tokens=24, stop_at_eos=False, cache_names=["blocks.0.hook_resid_post"])
        handed = model.generate(ids, max_new_tokens=24, stop_at_eos=False)
        ref = model.hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                                      eos_token_id=None, pad_token_id=model.tokenizer.pad_token_id)
        assert torch.equal(own.tokens, ref) and torch.equal(handed.tokens, ref)
        assert own.cache is not None and handed.cache is None


def test_generation_is_one_type_whatever_the_input(model, texts):
    """Text, a list of texts, ids with a padding mask, a prefill: always a Generation with
    the same fields; the hand-off to Hugging Face and verilens' own loop agree on all of
    them, also with EOS stopping (rows padded after they end)."""
    from verilens.hooks.generate import Generation

    ids, mask = model.tokenize(texts)
    eos = model.tokenizer.eos_token_id
    for inp, kw in ((texts[0], {}), (texts, {}), (ids, {"attention_mask": mask})):
        handed = model.generate(inp, max_new_tokens=12, **kw)
        own = model.generate(inp, max_new_tokens=12, cache_names=["blocks.1.hook_resid_post"], **kw)
        assert type(handed) is Generation and type(own) is Generation
        assert torch.equal(handed.tokens, own.tokens) and handed.text == own.text
        assert handed.continuation == own.continuation and handed.prompt_length == own.prompt_length
        assert own.cache["resid_post", 1].shape[:2] == own.new_tokens.shape
        for row, cont in zip(handed.new_tokens, handed.continuation):
            ended = (row == eos).nonzero()
            assert ended.numel() == 0 or bool((row[int(ended[0]):] == model.tokenizer.pad_token_id).all())
            assert cont == model.tokenizer.decode(row.tolist(), skip_special_tokens=True)
    pre = model.prefill(texts)
    assert model.generate(pre, max_new_tokens=5).text == model.generate(texts, max_new_tokens=5).text


def test_batched_left_padding_equals_single(model, texts):
    for own in ({}, {"cache_names": ["blocks.0.hook_resid_post"]}):  # Hugging Face's loop, then ours
        batch = model.generate(texts, max_new_tokens=16, stop_at_eos=False, **own).text
        assert isinstance(batch, list) and len(batch) == len(texts)
        for t, out in zip(texts, batch):
            single = model.generate(t, max_new_tokens=16, stop_at_eos=False, **own).text
            assert single == [out] and out.startswith(t)
        # the same batch as token ids with its padding mask
        ids, mask = model.tokenize(texts)
        out_ids = model.generate(ids, attention_mask=mask, max_new_tokens=16, stop_at_eos=False, **own).tokens
        assert [t + model.tokenizer.decode(row[ids.shape[1]:].tolist(), skip_special_tokens=True)
                for t, row in zip(texts, out_ids)] == batch


@pytest.fixture(params=[0.0, 2.0], ids=["second-cache-at-first-firing", "recompute-every-firing"])
def second_cache(request, monkeypatch):
    """Triggered all-position interventions either build the second KV cache at the first
    firing or never (rows recomputed in full at each firing): both must be exact."""
    import verilens.hooks.generate as g

    monkeypatch.setattr(g, "SECOND_CACHE_SHARE", request.param)


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


def _greedy_by_full_forwards(model, ids, steps):
    """Greedy decoding with no cache: a full forward (with the active interventions) per step."""
    for _ in range(steps):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


def _trigger_text(model, ids, steps):
    """A token the model generates a few times (and that round-trips as text), to use as
    the trigger."""
    plain = model.generate(ids, max_new_tokens=steps, stop_at_eos=False).new_tokens[0]
    counts = torch.bincount(plain)
    for tid in counts.argsort(descending=True).tolist():
        text = model.tokenizer.decode([tid])
        if model.tokenizer.encode(text, add_special_tokens=False) == [tid]:
            assert counts[tid] >= 2
            return text, tid
    raise AssertionError("no generated token round-trips")


@pytest.mark.parametrize("make", [
    lambda: [verilens.ablate_heads([(0, 1), (2, 3)])],
    lambda: [verilens.ablate_neurons({1: [0, 3, 9]}, positions="last")],
    lambda: [verilens.steer(torch.ones(64), layers=[1], alpha=5.0, positions="last"),
             verilens.ablate_neurons({2: [4]}, positions="last")],
    lambda: [verilens.project_out(torch.ones(64), layers=[0, 2])],
], ids=["heads-all-positions", "neurons-last", "steer+neurons-last", "project-out-all"])
def test_trigger_under_kv_cache_equals_full_recompute(model, texts, make, second_cache):
    ids = model.to_tokens(texts[0])
    steps = 20
    text, tid = _trigger_text(model, ids, steps)
    with model.intervene(*make(), when=verilens.at_token(text)):
        ours = model.generate(ids, max_new_tokens=steps, stop_at_eos=False).tokens
    ref = _reference_generate(model, ids, steps, make, tid)
    assert torch.equal(ours, ref)


def test_always_on_intervention_equals_full_recompute(qwen, texts):
    ids = qwen.to_tokens(texts[2])
    make = lambda: [verilens.ablate_heads([(1, 0)])]  # noqa: E731
    with qwen.intervene(*make()):
        ours = qwen.generate(ids, max_new_tokens=12, stop_at_eos=False).tokens
        ref = _greedy_by_full_forwards(qwen, ids, 12)
    assert torch.equal(ours, ref)
    # last-position-only interventions, on at every step: still a full recompute per step
    with qwen.intervene(verilens.ablate_neurons({0: list(range(40))}, positions="last")):
        ours = qwen.generate(ids, max_new_tokens=12, stop_at_eos=False).tokens
        ref = _greedy_by_full_forwards(qwen, ids, 12)
    assert torch.equal(ours, ref)


def test_trigger_in_a_left_padded_batch_equals_full_recompute_per_row(qwen, texts, second_cache):
    """Rows of different lengths fire on different steps; each row, and its cached
    activations at every step, equal the single-row full-recompute reference."""
    steps = 20
    text, tid = _trigger_text(qwen, qwen.to_tokens(texts[0]), steps)
    make = lambda: [verilens.ablate_heads([(1, 2)]), verilens.ablate_neurons({2: [1, 5]}, positions="all")]  # noqa: E731
    names = ["blocks.2.mlp.hook_post", "blocks.1.hook_resid_post"]
    with qwen.intervene(*make(), when=verilens.at_token(text)):
        g = qwen.generate(texts, max_new_tokens=steps, stop_at_eos=False, cache_names=names)
    out, cache = g.text, g.cache
    fired = 0
    for r, t in enumerate(texts):
        single = qwen.to_tokens(t)
        ref = _reference_generate(qwen, single, steps, make, tid)
        assert out[r] == t + qwen.tokenizer.decode(ref[0, single.shape[1]:].tolist(), skip_special_tokens=True)
        fired += int((ref[0, single.shape[1] - 1:-1] == tid).sum())
        for i in range(steps):  # the activation at the position that predicted token i
            prefix = ref[:, : single.shape[1] + i]
            if prefix[0, -1] == tid:
                with qwen.intervene(*make()):
                    _, full = qwen.run_with_cache(prefix, names_filter=names, positions="last")
            else:
                _, full = qwen.run_with_cache(prefix, names_filter=names, positions="last")
            for n in names:
                torch.testing.assert_close(cache[n][r, i], full[n][0, 0], atol=1e-5, rtol=1e-5)
    assert fired >= 2  # the trigger fired, so both caches were used


def test_mean_ablation_without_reference_is_recomputed_in_full(qwen, texts):
    """The mean over the current pass is not causal: under a KV cache it must be the mean
    over the whole sequence, as in a full forward (not over the one new token)."""
    ids = qwen.to_tokens(texts[1])
    make = lambda: [verilens.ablate_heads([(0, 1), (2, 0)], mode="mean")]  # noqa: E731
    with qwen.intervene(*make()):
        ours = qwen.generate(ids, max_new_tokens=10, stop_at_eos=False).tokens
        ref = _greedy_by_full_forwards(qwen, ids, 10)
    assert torch.equal(ours, ref)
    assert not torch.equal(ours, qwen.generate(ids, max_new_tokens=10, stop_at_eos=False).tokens)


def test_context_hooks_apply_once_beside_interventions(qwen, texts):
    """A `model.hooks(...)` edit counts once in every pass, also in intervened ones."""
    ids = qwen.to_tokens(texts[0])
    v = torch.randn(qwen.cfg.d_model, generator=torch.Generator().manual_seed(0))
    shift = lambda x, hook: x + 0.1 * v  # noqa: E731
    steps = 20
    make = lambda: [verilens.ablate_heads([(1, 0)])]  # noqa: E731
    with qwen.hooks([("blocks.0.hook_resid_post", shift)]):
        text, tid = _trigger_text(qwen, ids, steps)
        with qwen.intervene(*make(), when=verilens.at_token(text)):
            ours = qwen.generate(ids, max_new_tokens=steps, stop_at_eos=False).tokens
        ref = _reference_generate(qwen, ids, steps, make, tid)
        with qwen.intervene(*make()):
            always = qwen.generate(ids, max_new_tokens=steps, stop_at_eos=False).tokens
            ref_always = _greedy_by_full_forwards(qwen, ids, steps)
    assert torch.equal(ours, ref) and torch.equal(always, ref_always)
    with qwen.hooks([("blocks.0.hook_resid_post", shift)] * 2), qwen.intervene(*make()):
        twice = qwen.generate(ids, max_new_tokens=steps, stop_at_eos=False).tokens
    assert not torch.equal(twice, ref_always)  # the test sees a hook applied twice


@pytest.mark.parametrize("make,triggered", [
    (lambda: [], False),
    (lambda: [verilens.ablate_heads([(1, 2)])], True),  # a second cache beside the clean one
    (lambda: [verilens.ablate_neurons({2: [1, 5]}, positions="last")], True),  # intervened pass, cropped
    (lambda: [verilens.ablate_heads([(0, 1)], mode="mean")], True),  # recomputed in full
    (lambda: [verilens.ablate_heads([(1, 2)])], False),  # always on: inside the one cache
], ids=["none", "heads-trigger", "neurons-last-trigger", "mean-trigger", "heads-always"])
def test_generate_from_a_prefill_equals_generate_from_text(qwen, texts, make, triggered, second_cache):
    """One prefill serves many conditions: each gives the tokens and cached activations
    of a generate from the text, also when the prompt itself ends with the trigger."""
    steps = 20
    text, tid = _trigger_text(qwen, qwen.to_tokens(texts[0]), steps)
    prompts = texts + [texts[1] + text]  # the last one fires on the first step
    names = ["blocks.2.mlp.hook_post", "blocks.0.attn.hook_pattern"]
    pre = qwen.prefill(prompts, cache_names=names)
    assert pre.ids[-1, -1] == tid
    for _ in range(2):  # the prefill is not used up
        with qwen.intervene(*make(), when=verilens.at_token(text) if triggered else None):
            ours = qwen.generate(pre, max_new_tokens=steps, stop_at_eos=False)
            ref = qwen.generate(prompts, max_new_tokens=steps, stop_at_eos=False, cache_names=names)
        assert ours.text == ref.text and torch.equal(ours.tokens, ref.tokens)
        c1, c2 = ours.cache, ref.cache
        for n in names:
            assert torch.equal(c1[n], c2[n])


def test_prefill_bad_use(qwen, texts):
    with qwen.intervene(verilens.ablate_heads([(0, 0)])):
        with pytest.raises(VerilensError, match="outside"):
            qwen.prefill(texts)
    pre = qwen.prefill(texts)
    with pytest.raises(VerilensError, match="cache_names"):
        qwen.generate(pre, max_new_tokens=2, cache_names=["blocks.0.hook_resid_post"])
    with qwen.hooks([("blocks.0.hook_resid_post", lambda x, hook: x * 2)]):
        with pytest.raises(VerilensError, match="hooks changed"):
            qwen.generate(pre, max_new_tokens=2)
    with pytest.raises(VerilensError, match="attention_mask"):
        qwen.generate(pre, max_new_tokens=2, attention_mask=pre.mask)
    with pytest.raises(VerilensError, match="attention_mask"):
        qwen.generate(texts, max_new_tokens=2, attention_mask=pre.mask)
    assert qwen.generate(pre, max_new_tokens=3).text == qwen.generate(texts, max_new_tokens=3).text


def test_cache_during_generation(model, texts):
    ids = model.to_tokens(texts[0])
    g = model.generate(ids, max_new_tokens=6, stop_at_eos=False,
                      cache_names=["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"])
    out, cache = g.tokens, g.cache
    assert cache["resid_post", 1].shape == (1, 6, model.cfg.d_model)
    _, full = model.run_with_cache(out[:, :-1], names_filter=["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"])
    p = ids.shape[1]
    torch.testing.assert_close(cache["resid_post", 1][0], full["resid_post", 1][0, p - 1:], atol=1e-5, rtol=1e-5)
    pat = cache["pattern", 0]  # [b, new, head, keys so far], right-padded with zeros
    for i in range(6):  # step i's query is position p - 1 + i, over keys 0 .. p - 1 + i
        torch.testing.assert_close(pat[0, i, :, :p + i], full["pattern", 0][0, :, p - 1 + i, :p + i],
                                   atol=1e-5, rtol=1e-5)


def test_stop_strings_and_sampling(qwen, texts):
    plain = qwen.generate(texts[0], max_new_tokens=20, stop_at_eos=False).text[0]
    cont = plain[len(texts[0]):]
    stop = cont[5:8]
    g = qwen.generate(texts[0], max_new_tokens=20, stop=stop, stop_at_eos=False)
    stopped = g.text[0]
    assert stopped.endswith(stop) and len(stopped) < len(plain) and plain.startswith(stopped)
    assert g.continuation[0].endswith(stop) and stopped == texts[0] + g.continuation[0]
    a = qwen.generate(texts[0], max_new_tokens=10, do_sample=True, temperature=2.0, seed=7)
    b = qwen.generate(texts[0], max_new_tokens=10, do_sample=True, temperature=2.0, seed=7)
    c = qwen.generate(texts[0], max_new_tokens=10, do_sample=True, temperature=2.0, seed=8, top_k=5, top_p=0.9)
    assert a.text == b.text and torch.equal(a.tokens, b.tokens) and len(c.text) == 1


def test_bad_generation_input(qwen):
    with pytest.raises(VerilensError):
        qwen.generate(123)
    with pytest.raises(VerilensError):
        qwen.generate("x", max_new_tokens=-1)
