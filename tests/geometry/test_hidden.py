"""`verilens geometry --what hidden`: the per-layer curve against an independent computation
(Hugging Face's output_hidden_states + scipy pdist + pearsonr), on countdown-tiny, a tiny
random Llama of another depth and a tiny random BERT; report.json / report.html fields."""
import json
import shutil

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr

from verilens.errors import VerilensError
from verilens.geometry.hidden import hidden_states, layer_plan, parse_layers
from verilens.geometry.report import run_geometry
from verilens.models.embeddings import load_model_source
from verilens.models.loading import builtin_path


@pytest.fixture(scope="module")
def shallow_lm(tmp_path_factory):
    """A 2-block random Llama with countdown-tiny's tokenizer (so the two share every token)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("shallow") / "shallow-llama"
    tok = AutoTokenizer.from_pretrained(builtin_path("countdown-tiny"))
    torch.manual_seed(1)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    m.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def deep_lm(tiny_models, tmp_path_factory):
    """A 3-block random Qwen2 with tiny-lm's tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    d = tmp_path_factory.mktemp("deep") / "deep-lm"
    tok = AutoTokenizer.from_pretrained(tiny_models[0])
    torch.manual_seed(2)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                 num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                                 bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def hf_states(folder, ids, encoder=False):
    """Independent reference: each token after the start token ([CLS] ... [SEP] for an encoder),
    every hidden state from transformers' output_hidden_states, float64. transformers' last
    hidden state of a causal LM is after the final norm; verilens' last layer is the last
    block's output before it, so that one is read with a torch forward hook on the last block."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    ids = torch.as_tensor(ids)[:, None]
    got = {}
    if encoder:
        m = AutoModel.from_pretrained(folder)
        seq = torch.cat([torch.full_like(ids, tok.cls_token_id), ids, torch.full_like(ids, tok.sep_token_id)], 1)
    else:
        m = AutoModelForCausalLM.from_pretrained(folder)
        start = tok.bos_token_id if tok.bos_token is not None else tok.eos_token_id
        seq = torch.cat([torch.full_like(ids, start), ids], 1)
        m.model.layers[-1].register_forward_hook(
            lambda mod, args, out: got.__setitem__("last", out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        hs = list(m(input_ids=seq, output_hidden_states=True).hidden_states)
    if not encoder:
        hs[-1] = got["last"]
    return [h[:, 1].double().numpy() for h in hs], m


def final_norm(m, H):
    with torch.no_grad():
        return m.model.norm(torch.as_tensor(H)).numpy()


def ref_r(X, Y, metric="cosine"):
    return pearsonr(pdist(X, metric), pdist(Y, metric)).statistic


def test_parse_layers_and_plan(shallow_lm):
    assert parse_layers("all") is None and parse_layers("0,3,6") == [0, 3, 6]
    assert parse_layers("4-6,0") == [0, 4, 5, 6] and parse_layers([2, 1]) == [1, 2]
    for bad in ("x", "1.5", "-1", "3-1", ""):
        with pytest.raises(VerilensError, match="unknown layer"):
            parse_layers(bad)
    with pytest.raises(VerilensError, match="out of range for every model"):
        parse_layers("0-99999999999999")
    deep, shallow = load_model_source("countdown-tiny"), load_model_source(shallow_lm)
    assert layer_plan(deep, shallow, None) == [(0, 0), (3, 1), (6, 2)]  # relative depth, 6 vs 2 blocks
    assert layer_plan(shallow, deep, [1], match="index") == [(1, 1)]
    with pytest.raises(VerilensError, match="layer 3 is out of range for b: it has 2 blocks"):
        layer_plan(deep, shallow, [0, 3], names=("a", "b"))


def test_states_equal_transformers(shallow_lm):
    """Every layer from the HookedModel hook points equals the independent reference; layer 0 is
    the embedding row itself; the last layer is the last block's output before the final norm."""
    src = load_model_source("countdown-tiny")
    ids = np.arange(1, 60)
    H = hidden_states(src, ids, range(src.n_layers + 1), batch_size=16)
    ref, m = hf_states(str(builtin_path("countdown-tiny")), ids)
    for l in range(src.n_layers + 1):
        np.testing.assert_allclose(H[l], ref[l], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(H[0], src.matrix("embed")[ids].numpy())
    with torch.no_grad():  # the last layer is the final norm's input
        normed = m(input_ids=torch.stack([torch.zeros_like(torch.as_tensor(ids)), torch.as_tensor(ids)], 1),
                   output_hidden_states=True).hidden_states[-1][:, 1]
    np.testing.assert_allclose(final_norm(m, H[src.n_layers]), normed.numpy(), rtol=1e-4, atol=1e-4)


def test_curve_equals_independent_computation(shallow_lm, tmp_path):
    """The report's r per layer pair (closed form over every token pair, per-layer memmaps, batches
    that do not divide the list) equals scipy's pdist + pearsonr on transformers' hidden states."""
    rep = run_geometry(["countdown-tiny", shallow_lm], tmp_path / "o", what="hidden", permutations=9,
                       batch_size=37, progress=False)
    (pair,) = rep["pairs"]
    h = pair["hidden"]
    src = load_model_source("countdown-tiny")
    V = h["tokens"]
    assert V > 300  # the full shared vocabulary (checked below against shared_vocab)
    from verilens.geometry.vocab import shared_vocab

    sv = shared_vocab(src.tokenizer, src.tokenizer)
    keep = np.linalg.norm(src.matrix("embed")[sv.idx_a].numpy(), axis=1) > 0
    ids = sv.idx_a[keep]
    assert len(ids) == V
    ra, _ = hf_states(str(builtin_path("countdown-tiny")), ids)
    rb, _ = hf_states(shallow_lm, ids)
    assert [(row["layer_a"], row["layer_b"]) for row in h["layers"]] == [(0, 0), (3, 1), (6, 2)]
    for row in h["layers"]:
        la, lb = row["layer_a"], row["layer_b"]
        want = ref_r(ra[la], rb[lb])
        assert abs(row["r"] - want) < 1e-5, (la, lb, row["r"], want)
        assert row["tokens"] == V and row["pairs"] == V * (V - 1) // 2 and row["method"] == "closed"
        assert row["mantel"]["permutations"] == 9 and row["mantel"]["tokens"] == V
        assert row["mantel"]["r"] == pytest.approx(row["r"], abs=1e-12)
        assert 0 < row["mantel"]["p_value"] <= 1
    assert [row["depth"] for row in h["layers"]] == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("metric", ["dot", "sqeuclidean", "euclidean"])
def test_curve_other_metrics_and_encoder(tiny_models, tmp_path, metric):
    """A tiny causal LM vs a tiny BERT (hidden states via output_hidden_states at the token
    between [CLS] and [SEP]); every metric the steps offer, against scipy."""
    lm, enc = tiny_models
    rep = run_geometry([lm, enc], tmp_path / "o", what="hidden", metric=metric, progress=False)
    h = rep["pairs"][0]["hidden"]
    src_a, src_b = load_model_source(lm), load_model_source(enc)
    assert src_b.kind == "encoder" and not src_b.has_lm_head
    from verilens.geometry.vocab import shared_vocab

    sv = shared_vocab(src_a.tokenizer, src_b.tokenizer)
    assert h["tokens"] == len(sv.strings) >= 10
    ra, _ = hf_states(lm, sv.idx_a)
    rb, _ = hf_states(enc, sv.idx_b, encoder=True)
    scipy_metric = {"dot": None, "sqeuclidean": "sqeuclidean", "euclidean": "euclidean"}[metric]
    assert [(row["layer_a"], row["layer_b"]) for row in h["layers"]] == [(0, 0), (1, 1)]
    for row in h["layers"]:
        Xa, Xb = ra[row["layer_a"]], rb[row["layer_b"]]
        if scipy_metric is None:
            iu = np.triu_indices(len(Xa), 1)
            want = pearsonr((Xa @ Xa.T)[iu], (Xb @ Xb.T)[iu]).statistic
        else:
            want = ref_r(Xa, Xb, scipy_metric)
        assert abs(row["r"] - want) < 1e-5, (metric, row, want)
        assert row["method"] == ("stream" if metric == "euclidean" else "closed")


def test_report_fields_and_unembed_of_encoder(tiny_models, deep_lm, tmp_path):
    lm, enc = tiny_models
    out = tmp_path / "o"
    rep = run_geometry([lm, enc, deep_lm], out, what="all", layers="0,1", k=3, permutations=4,
                       progress=False)
    assert {p.name for p in out.iterdir()} == {"report.json", "report.html", "heatmap.png", "layers.png"}
    data = json.loads((out / "report.json").read_text())
    assert data == json.loads(json.dumps(rep, default=float))
    assert data["what"] == ["embed", "unembed", "hidden"] and data["hidden"]["layer_match"] == "relative"
    assert [m["lm_head"] for m in data["models"]] == [True, False, True]
    assert data["models"][1]["unembed"] == {"available": False,
                                            "reason": "no LM head (an encoder): no unembedding matrix"}
    by = {(p["a"], p["b"]): p for p in data["pairs"]}
    assert set(by) == {("tiny-lm", "tiny-encoder"), ("tiny-lm", "deep-lm"), ("tiny-encoder", "deep-lm")}
    # the encoder's unembed pairs say why they are missing; the two LMs' pair has one
    assert by["tiny-lm", "tiny-encoder"]["unembed"]["available"] is False
    assert "tiny-encoder has no LM head" in by["tiny-lm", "tiny-encoder"]["unembed"]["reason"]
    assert by["tiny-lm", "deep-lm"]["unembed"]["available"] is True
    assert data["matrix"]["unembed"][0][1] is None and data["matrix"]["unembed"][0][2] is not None
    for p in data["pairs"]:
        rows = p["hidden"]["layers"]
        assert [(r["layer_a"], r["layer_b"]) for r in rows] == [(0, 0), (1, 3 if p["b"] == "deep-lm" else 1)]
        for r in rows:
            assert set(r) >= {"layer_a", "layer_b", "depth", "r", "method", "tokens", "pairs", "mantel"}
            assert -1 <= r["r"] <= 1 and r["tokens"] >= 3 and 0 < r["mantel"]["p_value"] <= 1
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "geometry by layer" in html
    assert "not available" in html and "http" not in html.replace("http-equiv", "")  # self-contained
    assert (out / "layers.png").read_bytes()[:4] == b"\x89PNG"


def test_context_goes_between_start_and_token():
    """--context: [start] + the context's ids + [token], read at the token, as transformers gives."""
    from transformers import AutoModelForCausalLM

    src = load_model_source("countdown-tiny")
    ctx = src.tokenizer("Using the numbers", add_special_tokens=False)["input_ids"]
    assert len(ctx) >= 2
    ids = np.arange(5, 40)
    H = hidden_states(src, ids, [2], context="Using the numbers", batch_size=8)[2]
    m = AutoModelForCausalLM.from_pretrained(builtin_path("countdown-tiny"))
    seq = torch.tensor([[src.tokenizer.eos_token_id, *ctx, int(t)] for t in ids])
    with torch.no_grad():
        ref = m(input_ids=seq, output_hidden_states=True).hidden_states[2][:, -1]
    np.testing.assert_allclose(H, ref.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(H, hidden_states(src, ids, [2])[2], atol=1e-3)  # the context matters
