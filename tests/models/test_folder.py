"""Model folders are checked before transformers reads them (issue 24): config value types,
safetensors files whole and of the config's shapes, shards present."""
import json
import shutil

import pytest

import verilens
from verilens.errors import VerilensError
from verilens.models.folder import safetensors_header
from verilens.models.loading import builtin_path


@pytest.fixture
def folder(tmp_path):
    """A copy of countdown-tiny's folder to damage."""
    d = tmp_path / "m"
    shutil.copytree(builtin_path("countdown-tiny"), d)
    return d


def edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_the_intact_copy_loads(folder):
    m = verilens.load(folder)
    assert m.cfg.n_layers == 6


@pytest.mark.parametrize("key,value,match", [
    ("hidden_size", "abc", r"hidden_size is \"abc\", expected a positive integer"),
    ("num_hidden_layers", True, "num_hidden_layers is true"),
    ("num_attention_heads", -6, "num_attention_heads is -6"),
    ("intermediate_size", 576.0, "intermediate_size is 576.0"),
    ("vocab_size", None, "vocab_size is null"),
    ("rms_norm_eps", "1e-6", "rms_norm_eps .* a finite number"),
    ("tie_word_embeddings", "no", "tie_word_embeddings .* true or false"),
    ("num_key_value_heads", 4, "not a multiple of num_key_value_heads"),
])
def test_config_values_of_the_wrong_type(folder, key, value, match):
    edit_config(folder, **{key: value})
    with pytest.raises(VerilensError, match=match):
        verilens.load(folder)


def test_config_that_is_not_an_object_or_not_json(folder):
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(VerilensError, match="expected a JSON object"):
        verilens.load(folder)
    (folder / "config.json").write_text('{"model_type": "qwen2", ')
    with pytest.raises(VerilensError, match="cannot read"):
        verilens.load(folder)


@pytest.mark.parametrize("keep,match", [
    (lambda n: n // 2, "truncated: its header needs 5612160 bytes of tensor data"),
    (lambda n: 100, "not a complete safetensors file"),
    (lambda n: 0, "not a complete safetensors file"),
    (lambda n: n - 1, "truncated"),
])
def test_truncated_weights(folder, keep, match):
    w = folder / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[:keep(len(data))])
    with pytest.raises(VerilensError, match=match):
        verilens.load(folder)


def test_trailing_bytes_and_garbage_header(folder):
    w = folder / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data + b"\0" * 10)
    with pytest.raises(VerilensError, match="corrupt"):
        verilens.load(folder)
    w.write_bytes((50).to_bytes(8, "little") + b"{" * 50 + data[58:])
    with pytest.raises(VerilensError, match="not valid JSON"):
        verilens.load(folder)


def test_shapes_must_match_the_config(folder):
    edit_config(folder, intermediate_size=512)
    with pytest.raises(VerilensError, match=r"has shape \[.*needs \[.*different models"):
        verilens.load(folder)


def test_layer_count_must_match_the_config(folder):
    edit_config(folder, num_hidden_layers=5)
    with pytest.raises(VerilensError, match="config.json says 5 layers, the weights hold layers 0..5"):
        verilens.load(folder)


def test_missing_weights_and_shards(folder):
    (folder / "model.safetensors").rename(folder / "elsewhere.safetensors")
    with pytest.raises(VerilensError, match="holds no weights"):
        verilens.load(folder)
    names = list(safetensors_header(folder / "elsewhere.safetensors"))
    index = {"weight_map": {n: ("model-00001-of-00002.safetensors" if i % 2 else "model-00002-of-00002.safetensors")
                            for i, n in enumerate(names)}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(VerilensError, match="shards named in .* are missing: model-00001-of-00002"):
        verilens.load(folder)
    (folder / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(VerilensError, match="not a valid shard index"):
        verilens.load(folder)


def test_truncated_torch_bin(folder, tmp_path):
    import torch

    (folder / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1000)}, folder / "pytorch_model.bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(VerilensError, match="pytorch_model.bin is truncated"):
        verilens.load(folder)


def test_damaged_tokenizer_is_a_verilens_error(folder):
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(VerilensError, match="could not load"):
        verilens.load(folder)


def test_truncated_encoder_weights(tmp_path, small_tokenizer):
    """Encoder folders (geometry) get the same weight-file check."""
    from transformers import BertConfig, BertModel

    from verilens.models.embeddings import load_embeddings

    d = tmp_path / "enc"
    BertModel(BertConfig(vocab_size=len(small_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(d)
    small_tokenizer.save_pretrained(d)
    assert load_embeddings(str(d)).matrix.shape[1] == 16
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(VerilensError, match="model.safetensors is truncated"):
        load_embeddings(str(d))
