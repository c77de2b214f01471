"""The model-agnostic analysis parts on a real pretrained model, SmolLM2-135M (Llama
family, GQA 9/3 heads, tied embeddings): verdict sites under its tokenizer, probes on its
activations, GLU selection, channel scores, logit lens and interventions."""
import pytest
import torch

import verilens
from verilens.analysis import channel_scores, composition_matrix, select_variant_a, top_tokens, train_probes
from channel_reference import channel_scores_naive, composition_matrix_naive
from verilens.analysis.glu import value_vector_cosines
from verilens.analysis.traces import Site, Trace, site_activations, verdict_sites
from verilens.countdown import generate_problems, prompt, write_trace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    return verilens.load(smollm2_dir)


def test_probe_reads_the_verdict_token(smol):
    # Synthetic traces through SmolLM2; at the token after each verdict's " (" ("this" or
    # "not", however SmolLM2 splits them) the residual stream holds the verdict word, so a
    # probe trained on those activations must read it at nearly every layer.
    probs = generate_problems(16, seed=5)
    traces = [Trace(p, prompt(p), write_trace(p, i, max_failed=3)) for i, p in enumerate(probs)]
    sites = verdict_sites(smol, traces)
    assert len({s.trace for s in sites}) >= 8
    for s in sites[:6]:  # the site is the " (" that opens the verdict
        ids = smol.tokenizer.encode(traces[s.trace].text)
        assert smol.tokenizer.decode(ids[s.token]).endswith("(") or smol.tokenizer.decode(ids[s.token + 1]).startswith("(")
    after = [Site(s.trace, s.attempt, s.token + 1, s.label) for s in sites]
    acts = site_activations(smol, traces, after, progress=False)
    assert acts.shape == (len(sites), smol.cfg.n_layers, smol.cfg.d_model) and torch.isfinite(acts).all()
    res = train_probes(acts, torch.tensor([s.label for s in sites]), torch.tensor([s.trace for s in sites]), lr=1e-3)
    assert res.W.shape == (smol.cfg.n_layers, smol.cfg.d_model, 2)
    good = sum(a >= 0.95 for a in res.val_accuracy)
    assert good >= 0.8 * smol.cfg.n_layers, res.val_accuracy


def test_glu_selection_and_channel_scores(smol):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(smol.cfg.n_layers, smol.cfg.d_model, 2, generator=g)
    picked = select_variant_a(smol, W, layers=[20], top_k=10)
    cos = value_vector_cosines(smol, W[20, :, 1], [20])[0]
    assert [i for _, i in picked] == torch.topk(cos, 10).indices.tolist()
    neurons = picked + [(3, 7), (29, 1535)]
    torch.testing.assert_close(channel_scores(smol, neurons, "paper"), channel_scores_naive(smol, neurons),
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(composition_matrix(smol, neurons[:6]), composition_matrix_naive(smol, neurons[:6]),
                               rtol=1e-4, atol=1e-6)


def test_logit_lens_of_the_last_residual_is_the_prediction(smol):
    # the lens (final norm + W_U) of the last layer's residual is the model's own output
    text = "The capital of France is"
    logits, cache = smol.run_with_cache(text, names_filter=[f"blocks.{smol.cfg.n_layers - 1}.hook_resid_post"])
    top = top_tokens(smol, cache["resid_post", smol.cfg.n_layers - 1][0, -1], k=5)
    assert [t["id"] for t in top["tokens"]] == torch.topk(logits[0, -1], 5).indices.tolist()
    assert "Paris" in "".join(t["token"] for t in top["tokens"])
    assert top["script_share"]["latin"] >= 0.6


def test_interventions(smol):
    texts = ["The capital of France is", "Interpretability research studies how neural networks"]
    base = smol(texts)
    # head ablation equals zeroing that head's slice of the o_proj input by hand
    l, h, dh = 11, 4, smol.cfg.d_head
    hand = smol.blocks[l].self_attn.o_proj.register_forward_pre_hook(
        lambda m, a: (a[0].index_fill(-1, torch.arange(h * dh, (h + 1) * dh), 0.0),))
    try:
        want = smol(texts)
    finally:
        hand.remove()
    with smol.intervene(verilens.ablate_heads([(l, h)])):
        got = smol(texts)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (got - base).abs().max() > 1e-3
    # project_out leaves no component along the direction; steer adds exactly alpha * v
    v = torch.randn(smol.cfg.d_model, generator=torch.Generator().manual_seed(1))
    name = "blocks.14.hook_resid_post"
    _, plain = smol.run_with_cache(texts, names_filter=[name])
    with smol.intervene(verilens.project_out(v, [14])):
        _, c = smol.run_with_cache(texts, names_filter=[name])
    assert ((c[name] @ v) / v.norm()).abs().max() < 1e-3 * c[name].norm(dim=-1).max()
    with smol.intervene(verilens.steer(v, [14], alpha=2.0, positions="last")):
        _, c = smol.run_with_cache(texts, names_filter=[name])
    diff = c[name] - plain[name]
    torch.testing.assert_close(diff[:, -1], (2.0 * v).expand(2, -1), rtol=1e-4, atol=1e-4)
    assert diff[:, :-1].abs().max() == 0
