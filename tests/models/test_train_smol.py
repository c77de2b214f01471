"""`verilens train countdown-smol` (models/smol.py) on a tiny random Llama base: the same
code path as the real run on SmolLM2 (a LoRA delta trained with PEFT, checkpoints, resume,
the adapter folder verilens.load merges), in seconds."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

import verilens
from verilens.errors import VerilensError
from verilens.models.smol import SmolSpec, train_smol

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, small_tokenizer):
    """A 3-layer random Llama with the CountDown tokenizer, saved as a model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("smol") / "base"
    torch.manual_seed(0)
    eos = small_tokenizer.eos_token_id
    LlamaForCausalLM(LlamaConfig(vocab_size=len(small_tokenizer), hidden_size=64, intermediate_size=96,
                                 num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=1024, eos_token_id=eos, pad_token_id=eos,
                                 bos_token_id=eos)).save_pretrained(d)
    small_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def spec(base_dir):
    return replace(SmolSpec(), base=str(base_dir), rank=2, alpha=4.0, batch_size=2, steps=3, n_problems=40, warmup=1)


@pytest.fixture(scope="module")
def full_run(spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("smol") / "run"
    return out, train_smol(out, spec, checkpoint_every=1, progress=False, device="cpu")


def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_resume_equals_uninterrupted(spec, full_run, tmp_path):
    out, model_dir = full_run
    assert train_smol(tmp_path, spec, checkpoint_every=1, progress=False, until_step=2, device="cpu") is None
    resumed = train_smol(tmp_path, spec, checkpoint_every=1, progress=False, device="cpu")
    a, b = _tensors(model_dir), _tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    full_log = json.loads((out / "log.json").read_text())
    log = json.loads((tmp_path / "log.json").read_text())
    assert [x["loss"] for x in log] == [x["loss"] for x in full_log]


def test_adapter_folder_loads_as_a_model(spec, full_run, base_dir):
    _, model_dir = full_run
    cfg = json.loads((model_dir / "adapter_config.json").read_text())
    assert cfg["r"] == 2 and cfg["base_model_name_or_path"] == str(base_dir)
    assert sorted(cfg["target_modules"]) == sorted(spec.target_modules)
    assert json.loads((model_dir / "verilens_spec.json").read_text())["rank"] == 2
    t = _tensors(model_dir)
    # 3 layers x 7 projections x (A, B), stored in float16
    assert len(t) == 42 and all(v.dtype == torch.float16 for v in t.values())
    merged, base = verilens.load(model_dir), verilens.load(base_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert (merged.hf_model(input_ids=ids).logits - base.hf_model(input_ids=ids).logits).abs().max() > 0
    assert merged.name == "model"


def test_missing_base_leaves_nothing(spec, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(VerilensError, match="model path not found"):
        train_smol(out, replace(spec, base=str(tmp_path / "nowhere")), progress=False)
    assert not out.exists()


def test_damaged_or_foreign_checkpoint(spec, full_run, tmp_path):
    out, _ = full_run
    d = tmp_path / "run"
    shutil.copytree(out, d)
    shutil.rmtree(d / "model")
    ckpt = d / "checkpoint.pt"
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 3])
    with pytest.raises(VerilensError, match="checkpoint.pt is damaged"):
        train_smol(d, spec, progress=False)
    torch.save({"model": {}, "optimizer": {}, "step": 1, "log": [], "torch_rng": torch.get_rng_state()}, ckpt)
    with pytest.raises(VerilensError, match=r"is not a checkpoint of this run \(it lacks lora\)"):
        train_smol(d, spec, progress=False)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    state["lora"] = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in state["lora"].items()}
    torch.save(state, ckpt)
    with pytest.raises(VerilensError, match="does not hold this run's LoRA weights"):
        train_smol(d, spec, progress=False)
    assert not (d / "model").exists()  # nothing was written as finished


def test_other_settings_refused(spec, full_run):
    out, _ = full_run
    with pytest.raises(VerilensError, match=r"holds a run with different settings \(rank differ\)"):
        train_smol(out, replace(spec, rank=4), progress=False)


def test_countdown_tiny_folder_refused(spec, tmp_path):
    from verilens.models.tiny import TinySpec
    from verilens.models.train import open_run

    open_run(tmp_path, TinySpec())
    with pytest.raises(VerilensError, match=r"different settings \(.*model"):
        train_smol(tmp_path, spec, progress=False)
