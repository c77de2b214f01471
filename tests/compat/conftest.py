"""Fixtures for the TransformerLens compatibility tests (issue 19).

The tests in this folder are TransformerLens's own tests (see README.md here for the list and
the source file and commit of each), with only the model construction changed: where
TransformerLens loads solu-1l / solu-2l / gpt2 / distilgpt2 / tiny-stories-1M, we build

* `tiny_llama`: the tiny random Llama HookedModel of tests/conftest.py (`_random("llama", ...)`:
  3 layers, 4 query / 2 KV heads, d_model 64, CountDown tokenizer), and
* `smollm2`: SmolLM2-135M-Instruct, real weights, fp32 (`verilens.load(smollm2_dir)`).

Both are module scoped: a test module may add and remove hooks on them, and every module gets
fresh ones. `model` is parametrized over both where a test is cheap on both; `smollm2` alone is
used where the test needs a real vocabulary (IOI names as single tokens) or a real-sized model.
"""
import pytest
import torch

import verilens


def _root_conftest():
    """tests/conftest.py as a module (tests/ is not a package): for its `_random` builder."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "conftest.py"
    for mod in list(sys.modules.values()):
        if getattr(mod, "__file__", None) and Path(mod.__file__).resolve() == path:
            return mod
    spec = importlib.util.spec_from_file_location("_verilens_root_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _random(kind, tok, seed=0):
    return _root_conftest()._random(kind, tok, seed)


@pytest.fixture(scope="module")
def llama_tokenizer(small_tokenizer):
    """The CountDown tokenizer with a BOS token: the tiny Llama's config says bos_token_id =
    eos_token_id, and TransformerLens tests read `model.tokenizer.bos_token_id`. A copy, so the
    session's tokenizer is unchanged."""
    import copy

    tok = copy.deepcopy(small_tokenizer)
    tok.bos_token = tok.eos_token
    return tok


@pytest.fixture(scope="module")
def tiny_llama(llama_tokenizer):
    return _random("llama", llama_tokenizer)


@pytest.fixture(scope="module")
def tiny_llama_mha(llama_tokenizer):
    """The same tiny random Llama but with as many KV heads as query heads (no GQA), for the
    TransformerLens tests written for GPT-2 (multi-head attention) that assert hook_v has
    n_heads heads: on a GQA model hook_v has n_kv_heads heads, in TransformerLens too."""
    import transformers as T

    from verilens.hooks import HookedModel

    tok = llama_tokenizer
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                        bos_token_id=tok.eos_token_id)
    return HookedModel(T.LlamaForCausalLM(cfg).eval(), tok, "random-llama-mha")


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return verilens.load(str(smollm2_dir))


MODELS = ["tiny_llama", "smollm2"]


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    """Each TransformerLens test that takes `model` runs on both models."""
    m = request.getfixturevalue(request.param)
    yield m
    m.reset_hooks(including_permanent=True)
