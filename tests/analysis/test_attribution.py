"""Direct logit attribution of the verdict: the terms add up to the model's own logit
difference, heads add up to their layer's attention output, on random and real models."""
import pytest
import torch

import verilens
from verilens.analysis.attribution import verdict_attribution, verdict_ids
from verilens.countdown import generate_problems, prompt, write_trace
from verilens.errors import VerilensError


def _contexts(n=3):
    """Correct attempts of synthetic traces, cut right before their " (" (as in the pipeline)."""
    out = []
    for i, p in enumerate(generate_problems(n, seed=5)):
        text = prompt(p) + write_trace(p, i, max_failed=2)
        line = f"= {p.target} (this works)"
        out.append(text[: text.index(line) + len(line) - len(" (this works)")])
    return out


def _check(model, contexts):
    r = verdict_attribution(model, contexts, top_neurons=5)
    # exact split: embed + attention + MLP terms == logit("this") - logit("not"), per context
    assert r["max_error"] < 1e-3 * max(1.0, abs(r["logit_diff"]))
    total = r["embed"] + sum(r["attn"]) + sum(r["mlp"])
    assert total == pytest.approx(r["logit_diff"], abs=1e-3 * max(1.0, abs(r["logit_diff"])))
    for l, row in enumerate(r["heads"]):  # no o_proj bias in these families: heads sum to the layer
        assert sum(row) == pytest.approx(r["attn"][l], abs=1e-4 * max(1.0, abs(r["attn"][l])))
    assert len(r["top_neurons"]) == 5 and r["n"] == len(contexts)
    return r


def test_terms_add_up_on_random_models(model):
    _check(model, _contexts())


def test_every_family_adds_up_or_is_refused(family_model):
    """Exact where the residual is a plain sum of the writes (Qwen2/3, Llama, Mistral);
    a clear refusal where post-norms or soft-capped logits break the split (Gemma)."""
    if family_model.cfg.post_norms or family_model.cfg.final_softcap is not None:
        with pytest.raises(VerilensError, match="norms each write or soft-caps"):
            verdict_attribution(family_model, _contexts(1))
    else:
        _check(family_model, _contexts(2))


def test_logit_diff_matches_a_plain_forward(model):
    ctx = _contexts(2)
    r = verdict_attribution(model, ctx)
    this, not_ = verdict_ids(model)
    diffs = []
    for c in ctx:
        with torch.no_grad():
            logits = model.hf_model(model.to_tokens(c + " (")).logits[0, -1].float()
        diffs.append(float(logits[this] - logits[not_]))
    assert r["logit_diff"] == pytest.approx(sum(diffs) / len(diffs), rel=1e-4, abs=1e-4)


def test_countdown_tiny_writes_this_on_correct_attempts():
    tiny = verilens.load("countdown-tiny")
    r = _check(tiny, _contexts(4))
    assert r["logit_diff"] > 0  # it accepts them


@pytest.mark.slow
def test_terms_add_up_on_smollm2(smollm2_dir):
    _check(verilens.load(smollm2_dir), _contexts(2))


def test_bad_input(model):
    with pytest.raises(VerilensError, match="at least one context"):
        verdict_attribution(model, [])


def test_neurons_add_up_to_their_mlp(model):
    L, N = model.cfg.n_layers, model.cfg.d_mlp
    r = verdict_attribution(model, _contexts(2), top_neurons=L * N)  # every neuron
    per_layer = [0.0] * L
    for l, _, v in r["top_neurons"]:
        per_layer[l] += v
    for l in range(L):  # down_proj has no bias in these families
        assert per_layer[l] == pytest.approx(r["mlp"][l], abs=1e-4 * max(1.0, abs(r["mlp"][l])))
