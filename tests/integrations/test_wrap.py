"""verilens.wrap over a model other tools loaded: a plain Hugging Face model, a
TransformerLens TransformerBridge and an nnsight LanguageModel of SmolLM2-135M (real
weights). The wrapped HookedModel shares the tool's weights (same storage), and every
activation, intervention and generation equals verilens.load's on the same folder."""
import warnings

import pytest
import torch

import verilens
from verilens.analysis import channel_scores, select_variant_a

pytestmark = pytest.mark.slow

TEXTS = ["Using the numbers [3, 5, 7], create an equation that equals 15.", "- 12 + 3 = 15 (this works)"]


@pytest.fixture(scope="module")
def loaded(smollm2_dir):
    return verilens.load(smollm2_dir)


def _hf(path):
    import transformers as T

    return T.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf(smollm2_dir):
    return _hf(smollm2_dir)


@pytest.fixture(scope="module")
def bridge(smollm2_dir):
    tl = pytest.importorskip("transformer_lens.model_bridge", reason="pip install 'verilens[tl]'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tl.TransformerBridge.boot_transformers(str(smollm2_dir), hf_model=_hf(smollm2_dir))


@pytest.fixture(scope="module")
def lm(smollm2_dir):
    nnsight = pytest.importorskip("nnsight", reason="pip install 'verilens[nnsight]'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import transformers as T

        # lazy (weights on the meta device until dispatched): wrap must dispatch it; the
        # tokenizer is passed since nnsight 0.8 cannot infer one for a local folder offline
        return nnsight.LanguageModel(str(smollm2_dir), tokenizer=T.AutoTokenizer.from_pretrained(smollm2_dir))


def _native_params(module):
    """data_ptr of every parameter under `module`, bridge components looked through."""
    return {p.data_ptr() for p in module.parameters()}


@pytest.fixture(scope="module", params=["hf", "bridge", "nnsight"])
def wrapped(request, hf, smollm2_dir):
    tool = {"hf": lambda: hf, "bridge": lambda: request.getfixturevalue("bridge"),
            "nnsight": lambda: request.getfixturevalue("lm")}[request.param]()
    return request.param, tool, verilens.wrap(tool)


def test_same_weights_no_copy(wrapped):
    kind, tool, m = wrapped
    native = {"hf": lambda: tool, "bridge": lambda: tool.original_model, "nnsight": lambda: tool._module}[kind]()
    ours = [p.data_ptr() for p in m.hf_model.parameters()]
    assert len(ours) == len(list(m.hf_model.parameters())) and set(ours) <= _native_params(native)
    assert m.W_Q.shape[0] == m.cfg.n_layers
    assert m.layer_weights(3)["W_out"].data_ptr() == m.module(3, "down").weight.data_ptr()


def test_activations_equal_load(wrapped, loaded):
    _, _, m = wrapped
    names = lambda n: n.endswith(("resid_post", "hook_z", "hook_post", "hook_normalized"))  # noqa: E731
    want_logits, want = loaded.run_with_cache(TEXTS, names_filter=names)
    logits, got = m.run_with_cache(TEXTS, names_filter=names)
    real = want.attention_mask.bool()
    assert (logits - want_logits)[real].abs().max() <= 1e-5
    for name in want.keys():
        assert (got[name] - want[name])[real].abs().max() <= 1e-5, name


def test_triggered_ablation_generation_equals_load(wrapped, loaded):
    _, _, m = wrapped
    heads = [(3, 1), (10, 4), (20, 0)]
    outs = []
    for model in (loaded, m):
        with model.intervene(verilens.ablate_heads(heads), when=verilens.at_token(" (")):
            outs.append(model.generate(TEXTS[1][:-11], max_new_tokens=12).tokens)
    assert torch.equal(outs[0], outs[1])


def test_weight_analyses_equal_load(wrapped, loaded):
    _, _, m = wrapped
    W = torch.randn(m.cfg.n_layers, m.cfg.d_model, 2, generator=torch.Generator().manual_seed(0))
    picked = select_variant_a(m, W, layers=[20, 25], top_k=6)
    assert picked == select_variant_a(loaded, W, layers=[20, 25], top_k=6)
    assert torch.equal(channel_scores(m, picked, "paper"), channel_scores(loaded, picked, "paper"))


def test_bridge_still_works_after_wrap(bridge):
    before = bridge(TEXTS[0])
    m = verilens.wrap(bridge)
    with m.intervene(verilens.ablate_heads([(2, 0)])):
        m(TEXTS[0])
    assert torch.equal(bridge(TEXTS[0]), before)
    # TransformerLens' tokenizer adds a BOS token; verilens uses the checkpoint's unless told
    m_tl = verilens.wrap(bridge, tokenizer=bridge.tokenizer)
    assert torch.equal(m_tl.to_tokens(TEXTS[0]), bridge.to_tokens(TEXTS[0]))
    assert (m_tl(TEXTS[0]) - before).abs().max() <= 1e-4  # the bridge runs eager attention, verilens sdpa


def test_bad_input(bridge, smollm2_dir):
    import transformers as T

    with pytest.raises(verilens.VerilensError, match="takes a Hugging Face causal LM"):
        verilens.wrap(object())
    with pytest.raises(verilens.VerilensError, match="takes a Hugging Face causal LM"):
        verilens.wrap(torch.nn.Linear(2, 2))
    gpt2 = T.GPT2LMHeadModel(T.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10))
    with pytest.raises(verilens.VerilensError, match="gpt2"):
        verilens.wrap(gpt2, tokenizer=verilens.load("countdown-tiny").tokenizer)
    with pytest.raises(verilens.VerilensError, match="without a tokenizer"):
        verilens.wrap(T.LlamaForCausalLM(T.LlamaConfig(num_hidden_layers=1, hidden_size=8, intermediate_size=8,
                                                       num_attention_heads=2, vocab_size=10)))


def test_bridge_with_processed_weights_is_refused(smollm2_dir):
    tl = pytest.importorskip("transformer_lens.model_bridge")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = tl.TransformerBridge.boot_transformers(str(smollm2_dir), hf_model=_hf(smollm2_dir))
        b.enable_compatibility_mode()
    with pytest.raises(verilens.VerilensError, match="processed weights"):
        verilens.wrap(b)
