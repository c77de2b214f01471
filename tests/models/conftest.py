"""Model folders for the loading tests (`smollm2_dir` lives in tests/conftest.py).

`tiny_random_qwen2_dir`, `tiny_random_llama_dir`, `tiny_gpt2_dir`: tiny randomly
initialised models with a small trained tokenizer, written once per session."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

# ----------------------------------------------------------------------------- tiny models

def _tokenizer_corpus() -> list[str]:
    # `train_tokenizer` insists that "not", "this", " (" and each digit are single tokens,
    # so the corpus has those often, also at line starts ("not" without its space).
    return [
        f"this is not ({i % 97})\nnot this ({i * 7 % 13})\nthis {i} is the answer" for i in range(300)
    ]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from verilens.models.tokenizer import train_tokenizer

    return train_tokenizer(_tokenizer_corpus(), vocab_size=300)


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _gqa_kwargs(tokenizer) -> dict:
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    return dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=False,
    )


@pytest.fixture(scope="session")
def tiny_random_qwen2_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 2-layer Qwen2ForCausalLM (hidden 64, 4 heads, 2 KV heads), random weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**_gqa_kwargs(tiny_tokenizer)))
    return _save(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_random_llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 2-layer LlamaForCausalLM (hidden 64, 4 heads, 2 KV heads), random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**_gqa_kwargs(tiny_tokenizer)))
    return _save(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 1-layer GPT-2 (GELU MLP, no GLU): a causal LM verilens does not support."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    return _save(GPT2LMHeadModel(config), tiny_tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))
