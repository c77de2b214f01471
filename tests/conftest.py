"""Shared fixtures: tiny random Qwen2/Llama HookedModels with a CountDown tokenizer."""
import os

# Tests never reach the network: models and tokenizers come from local files only.
# (Set before anything imports huggingface_hub.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from verilens.countdown import generate_problems, prompt, write_trace  # noqa: E402
from verilens.hooks import HookedModel  # noqa: E402
from verilens.models.tokenizer import train_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def small_tokenizer():
    ps = generate_problems(200, seed=3)
    return train_tokenizer([prompt(p) + write_trace(p, i) for i, p in enumerate(ps)], 1024)


def _random(kind, tok, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    kw = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
              eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    hf = (Qwen2ForCausalLM(Qwen2Config(**kw)) if kind == "qwen2" else LlamaForCausalLM(LlamaConfig(**kw))).eval()
    # random init makes near-uniform logits; sharpen so greedy decoding has clear winners
    with torch.no_grad():
        hf.lm_head.weight.mul_(20)
    return HookedModel(hf, tok, f"random-{kind}")


@pytest.fixture(scope="session", params=["qwen2", "llama"])
def model(request, small_tokenizer):
    return _random(request.param, small_tokenizer)


@pytest.fixture(scope="session")
def qwen(small_tokenizer):
    return _random("qwen2", small_tokenizer, seed=1)


@pytest.fixture(scope="session")
def texts():
    ps = generate_problems(3, seed=11)
    return [prompt(ps[0]), prompt(ps[1])[:150], prompt(ps[2]) + " We have the numbers"]
