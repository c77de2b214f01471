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


# ------------------------------------------------- shapes and completeness in every weight format

def tiny_state():
    from safetensors.torch import load_file

    return load_file(str(builtin_path("countdown-tiny") / "model.safetensors"))


def logits_of(d):
    import torch

    m = verilens.load(d)
    ids = m.tokenizer("8 3 5 = 7", return_tensors="pt").input_ids
    with torch.no_grad():
        return m.hf_model(ids).logits


def write_shards(d, state, fmt, n=2):
    """Replace the folder's weights by `n` shards of `state` in `fmt` ("safetensors" or "bin")
    with the index transformers writes; returns {tensor: shard}."""
    import torch
    from safetensors.torch import save_file

    (d / "model.safetensors").unlink(missing_ok=True)
    names = sorted(state)
    weight_map = {}
    for i in range(n):
        shard = (f"model-{i + 1:05d}-of-{n:05d}.safetensors" if fmt == "safetensors"
                 else f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin")
        part = {k: state[k].contiguous() for k in names[i::n]}
        save_file(part, d / shard) if fmt == "safetensors" else torch.save(part, d / shard)
        weight_map.update({k: shard for k in part})
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (d / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def write_bin(d, state):
    import torch

    (d / "model.safetensors").unlink(missing_ok=True)
    torch.save(state, d / "pytorch_model.bin")


def write_safetensors(d, state):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, d / "model.safetensors")


WRONG = [  # (tensor, wrong shape, the shape config.json implies)
    ("model.layers.2.self_attn.k_proj.weight", [65, 192], [64, 192]),
    ("model.layers.0.self_attn.q_proj.bias", [190], [192]),
    ("model.layers.5.post_attention_layernorm.weight", [191], [192]),
    ("model.norm.weight", [192, 1], [192]),
    ("model.embed_tokens.weight", [575, 192], [576, 192]),
    ("model.layers.4.mlp.down_proj.weight", [576, 192], [192, 576]),
]


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "safetensors-shards", "bin-shards"])
def test_every_weight_format_loads_the_same_model(folder, fmt):
    """The checks accept countdown-tiny in each format transformers reads, and it is the same model."""
    want = logits_of(folder)
    state = tiny_state()
    if fmt == "bin":
        write_bin(folder, state)
    elif fmt.endswith("shards"):
        write_shards(folder, state, fmt.split("-")[0], n=3)
    assert not (folder / "model.safetensors").exists() or fmt == "safetensors"
    assert (logits_of(folder) - want).abs().max() == 0


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "safetensors-shards", "bin-shards"])
@pytest.mark.parametrize("name,shape,want", WRONG)
def test_a_tensor_of_the_wrong_shape_is_named(folder, fmt, name, shape, want):
    import torch

    state = tiny_state()
    state[name] = torch.zeros(shape, dtype=state[name].dtype)
    if fmt == "safetensors":
        write_safetensors(folder, state)
        file = "model.safetensors"
    elif fmt == "bin":
        write_bin(folder, state)
        file = "pytorch_model.bin"
    else:
        file = write_shards(folder, state, fmt.split("-")[0])[name]
    with pytest.raises(VerilensError) as e:
        verilens.load(folder)
    msg = str(e.value)
    assert f"{folder / file}: tensor {name} has shape {shape}" in msg, msg
    assert f"needs {want}" in msg and "different models" in msg, msg


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "safetensors-shards"])
@pytest.mark.parametrize("name,match", [
    ("model.layers.3.mlp.up_proj.weight", "layer 3 has no mlp.up_proj.weight"),
    ("model.layers.0.input_layernorm.weight", "layer 0 has no input_layernorm.weight"),
    ("model.norm.weight", "have no norm.weight"),
    ("lm_head.weight", "have no lm_head.weight"),
    ("model.embed_tokens.weight", "have no embed_tokens.weight"),
])
def test_a_missing_tensor_is_named(folder, fmt, name, match):
    """transformers would fill a missing tensor with random numbers and only warn."""
    state = tiny_state()
    del state[name]
    if fmt == "safetensors":
        write_safetensors(folder, state)
    elif fmt == "bin":
        write_bin(folder, state)
    else:
        write_shards(folder, state, "safetensors")
    with pytest.raises(VerilensError, match=match):
        verilens.load(folder)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_shards_and_index_must_agree(folder, fmt):
    state = tiny_state()
    weight_map = write_shards(folder, state, fmt, n=2)
    index = folder / ("model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json")
    shard1, shard2 = sorted(set(weight_map.values()))
    # an index entry that points at the other shard
    name = next(k for k, v in weight_map.items() if v == shard1)
    index.write_text(json.dumps({"weight_map": {**weight_map, name: shard2}}))
    with pytest.raises(VerilensError, match=f"{shard2} does not hold the tensor {name} that {index.name} places"):
        verilens.load(folder)
    # a shard that is gone
    index.write_text(json.dumps({"weight_map": weight_map}))
    (folder / shard2).unlink()
    with pytest.raises(VerilensError, match=f"shards named in {index.name} are missing: {shard2}"):
        verilens.load(folder)
    # an index that names no shard, or one outside the folder
    for bad in ({"weight_map": {}}, {"weight_map": {name: "../elsewhere"}}, {"weight_map": [1]}, {}):
        index.write_text(json.dumps(bad))
        with pytest.raises(VerilensError, match="not a valid shard index"):
            verilens.load(folder)


def test_a_shard_cut_off_is_named(folder):
    weight_map = write_shards(folder, tiny_state(), "safetensors", n=2)
    shard = folder / sorted(set(weight_map.values()))[1]
    shard.write_bytes(shard.read_bytes()[:-5000])
    with pytest.raises(VerilensError, match=f"{shard.name} is truncated"):
        verilens.load(folder)


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[: len(b) // 2], "pytorch_model.bin is truncated"),
    (lambda b: b[:-30], "pytorch_model.bin is truncated"),
    (lambda b: b"\0" * 100, "pytorch_model.bin is not a torch checkpoint"),
    (lambda b: b"PK\x03\x04" + b"\0" * 100, "pytorch_model.bin is truncated"),
])
def test_a_damaged_bin_is_named(folder, damage, match):
    write_bin(folder, tiny_state())
    f = folder / "pytorch_model.bin"
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(VerilensError, match=match):
        verilens.load(folder)


def test_a_bin_that_is_not_a_state_dict(folder):
    import torch

    (folder / "model.safetensors").unlink()
    torch.save([torch.zeros(3)], folder / "pytorch_model.bin")
    with pytest.raises(VerilensError, match="pytorch_model.bin is not a state dict"):
        verilens.load(folder)


class Payload:  # a pickle that would run code: weights_only refuses it
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_bin_with_code_in_its_pickle_is_refused(folder, capsys):
    import torch

    (folder / "model.safetensors").unlink()
    torch.save({"model.norm.weight": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(VerilensError, match="pytorch_model.bin is not a valid torch checkpoint"):
        verilens.load(folder)
    assert "pwned" not in capsys.readouterr().out


def test_a_legacy_bin_still_loads(folder):
    """The pre-zip torch format has no memory-mappable layout: its shapes are left to transformers."""
    import torch

    want = logits_of(folder)
    (folder / "model.safetensors").unlink()
    torch.save(tiny_state(), folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert (logits_of(folder) - want).abs().max() == 0


def test_bin_shapes_come_from_the_pickle_alone(tmp_path):
    """The .bin check reads the pickle and the zip directory, never the weights: with every
    weight record overwritten in place (same sizes; CRCs now wrong) it gives the same shapes."""
    import struct
    import zipfile

    import torch

    from verilens.models.folder import torch_checkpoint_shapes

    f = tmp_path / "pytorch_model.bin"
    state = tiny_state()
    torch.save(state, f)
    with zipfile.ZipFile(f) as z:
        records = [i for i in z.infolist() if "/data/" in i.filename]
    raw = bytearray(f.read_bytes())
    for i in records:  # local header: 30 bytes, then the name and the extra field
        n_name, n_extra = struct.unpack("<HH", raw[i.header_offset + 26:i.header_offset + 30])
        start = i.header_offset + 30 + n_name + n_extra
        raw[start:start + i.file_size] = b"\xff" * i.file_size
    f.write_bytes(bytes(raw))
    assert len(records) == len(state)
    assert torch_checkpoint_shapes(f) == {k: list(v.shape) for k, v in state.items()}


# ------------------------------------------------------------------------------------- GGUF

def test_the_real_gguf_passes_the_check(smollm2_gguf):
    from verilens.models.folder import check_gguf_file

    check_gguf_file(smollm2_gguf)


@pytest.mark.parametrize("endian", ["LITTLE", "BIG"])
def test_gguf_tensor_table_is_the_readers(tmp_path, endian):
    """The header walk of check_gguf_file finds every tensor's end where the gguf package's
    GGUFReader does: a fresh random file of both byte orders, with string, array and nested
    array metadata, a non-default alignment, and float and block-quantised tensors."""
    import mmap

    import numpy as np

    gguf = pytest.importorskip("gguf")
    from verilens.models.folder import _gguf_tensor_table

    rng = np.random.default_rng()
    f = tmp_path / "random.gguf"
    w = gguf.GGUFWriter(str(f), "llama", endianess=getattr(gguf.GGUFEndian, endian))
    w.add_custom_alignment(256)  # general.alignment (GGUF's default: 32), and the writer pads to it
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" * int(rng.integers(0, 4)) for i in range(int(rng.integers(1, 300)))])
    w.add_array("x.nested", [[1, 2], [3]])
    w.add_float32("x.f", 0.5)
    w.add_string("x.s", "verilens")
    for i in range(int(rng.integers(1, 6))):
        shape = tuple(int(rng.integers(1, 5)) * 32 for _ in range(int(rng.integers(1, 3))))
        dtype = [np.float32, np.float16][i % 2]
        data = rng.standard_normal(shape).astype(dtype)
        if endian == "BIG":
            data = data.byteswap()
        w.add_tensor(f"t{i}", data)
    w.add_tensor("q", rng.integers(0, 255, (4, 34), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    reader = gguf.GGUFReader(f)
    want = [(t.name, int(t.data_offset) + int(t.n_bytes)) for t in reader.tensors]
    with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        assert _gguf_tensor_table(buf, gguf.GGML_QUANT_SIZES) == want
    del reader


@pytest.mark.parametrize("keep,match", [
    (lambda n: n // 2, "is truncated or damaged"),
    (lambda n: n - 1, "is truncated"),
    (lambda n: 100_000, "is truncated or damaged"),
    (lambda n: 1000, "is truncated or damaged"),
    (lambda n: 3, "not a GGUF file"),
    (lambda n: 0, "is empty"),
])
def test_a_truncated_gguf_is_named(tmp_path, smollm2_gguf, keep, match):
    f = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as src:
        f.write_bytes(src.read(keep(smollm2_gguf.stat().st_size)))
    with pytest.raises(VerilensError, match=match) as e:
        verilens.load(f)
    assert str(f) in str(e.value)


def test_random_bytes_named_gguf(tmp_path):
    import os

    pytest.importorskip("gguf")
    f = tmp_path / "model.gguf"
    f.write_bytes(os.urandom(1 << 20))
    with pytest.raises(VerilensError, match=f"{f} is not a GGUF file"):
        verilens.load(f)
    f.write_bytes(b"GGUF" + os.urandom(1 << 20))  # the magic, then garbage
    with pytest.raises(VerilensError, match=f"{f} is truncated or damaged"):
        verilens.load(f)


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "llama", "mistral", "gemma2", "gemma3"])
@pytest.mark.parametrize("tied", [False, True])
def test_every_family_passes_and_is_checked(tmp_path, small_tokenizer, kind, tied):
    """A save_pretrained folder of each supported family (lm_head tied or not) passes the checks
    and loads; a per-head tensor of the wrong size (Qwen3/Gemma3's q_norm, others' k_proj) is named."""
    import torch
    from safetensors.torch import load_file, save_file

    import transformers as T

    tok = small_tokenizer
    kw = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
              bos_token_id=tok.eos_token_id, tie_word_embeddings=tied)
    gemma = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                 layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    hf = {"qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**kw)),
          "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(head_dim=16, **kw)),
          "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**kw)),
          "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(sliding_window=8, **kw)),
          "gemma2": lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**gemma, **kw)),
          "gemma3": lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(**gemma, **kw))}[kind]()
    d = tmp_path / kind
    hf.save_pretrained(d)
    small_tokenizer.save_pretrained(d)
    m = verilens.load(d)
    assert m.cfg.n_layers == 3
    state = load_file(d / "model.safetensors")
    assert ("lm_head.weight" in state) is not tied
    name = ("model.layers.1.self_attn.q_norm.weight" if kind in ("qwen3", "gemma3")
            else "model.layers.1.self_attn.k_proj.weight")
    want = list(state[name].shape)
    state[name] = torch.zeros([want[0] + 1, *want[1:]])
    save_file(state, d / "model.safetensors")
    with pytest.raises(VerilensError, match=rf"tensor {name} has shape \[{want[0] + 1}.*needs \[{want[0]}"):
        verilens.load(d)


def _gguf_header(n_tensors, n_kv, version=3):
    import struct

    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _gguf_str(s):
    import struct

    return struct.pack("<Q", len(s)) + s.encode()


@pytest.mark.parametrize("data,match", [
    (_gguf_header(2**63, 2**63), "is truncated or damaged"),               # counts past any file
    (_gguf_header(0, 1) + (2**62).to_bytes(8, "little") + b"abc", "is truncated or damaged"),  # a key of 2^62 bytes
    (_gguf_header(0, 0, version=99), "is truncated or damaged.*version 99"),
    (_gguf_header(0, 1) + _gguf_str("general.architecture") + (8).to_bytes(4, "little") + _gguf_str("llama"),
     "holds no tensors"),
    (_gguf_header(1, 0) + _gguf_str("w") + (2).to_bytes(4, "little") + (2**40).to_bytes(8, "little") * 2
     + (0).to_bytes(4, "little") + (0).to_bytes(8, "little") + b"\0" * 64, "is truncated or damaged"),  # 2^80 floats
])
def test_crafted_gguf_headers_fail_fast(tmp_path, data, match):
    """Headers that promise more than the file holds are refused at once, with no large allocation."""
    import time

    pytest.importorskip("gguf")
    f = tmp_path / "crafted.gguf"
    f.write_bytes(data)
    t0 = time.perf_counter()
    with pytest.raises(VerilensError, match=match):
        verilens.load(f)
    assert time.perf_counter() - t0 < 10
