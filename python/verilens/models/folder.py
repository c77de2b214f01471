"""Checks of a Hugging Face model folder before transformers reads it.

transformers answers a config value of the wrong type or a truncated weight file with an
exception from deep inside huggingface_hub or safetensors (or, for some, a model with
random weights and a warning). These checks read only config.json and the safetensors
headers (a few kilobytes, whatever the model's size) and say what is wrong and what to do."""
from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path

from ..errors import VerilensError
from ..hooks.arch import arch_for

# config.json keys read by the supported families, by the type they must have. Null is
# allowed where transformers derives a default (head_dim, num_key_value_heads, windows).
_POSITIVE_INTS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                  "max_position_embeddings")
_OPTIONAL_POSITIVE_INTS = ("num_key_value_heads", "head_dim", "sliding_window")
_OPTIONAL_NUMBERS = ("rms_norm_eps", "rope_theta", "attention_dropout", "initializer_range",
                     "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar")
_BOOLS = ("tie_word_embeddings", "use_cache", "attention_bias", "use_sliding_window")
_STRINGS = ("hidden_act", "hidden_activation")

# bytes per element of the safetensors dtypes
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
             "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
_MAX_HEADER = 100_000_000  # the safetensors library's own limit on a header


def _bad_config(path: Path, why: str) -> VerilensError:
    return VerilensError(f"{path}: {why}; fix config.json (compare it with the original model's) or download the "
                         "model folder again")


def read_config(config_path: Path) -> dict:
    """config.json as a dict, with the keys the supported families read of the right types."""
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise VerilensError(f"cannot read {config_path}: {str(e)[:200]}; download the model folder again") from e
    if not isinstance(cfg, dict):
        raise _bad_config(config_path, f"expected a JSON object, got {type(cfg).__name__}")
    try:
        arch_for(cfg.get("model_type"))
    except VerilensError as e:
        raise VerilensError(f"{config_path.parent}: {e}") from None

    def bad(key, want):
        return _bad_config(config_path, f"{key} is {json.dumps(cfg[key])[:40]}, expected {want}")

    for key in _POSITIVE_INTS + _OPTIONAL_POSITIVE_INTS:
        if key not in cfg or (cfg[key] is None and key in _OPTIONAL_POSITIVE_INTS):
            continue
        v = cfg[key]
        if type(v) is not int or v <= 0:
            raise bad(key, "a positive integer")
    for key in _OPTIONAL_NUMBERS:
        v = cfg.get(key)
        if v is not None and (type(v) not in (int, float) or not math.isfinite(v)):
            raise bad(key, "a finite number")
    for key in _BOOLS:
        if key in cfg and type(cfg[key]) is not bool:
            raise bad(key, "true or false")
    for key in _STRINGS:
        if key in cfg and cfg[key] is not None and not isinstance(cfg[key], str):
            raise bad(key, "a string")
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
        if key not in cfg:
            raise _bad_config(config_path, f"{key} is missing")
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    if heads % kv:
        raise _bad_config(config_path, f"num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv})")
    if not cfg.get("head_dim") and cfg["hidden_size"] % heads:
        raise _bad_config(config_path, f"hidden_size ({cfg['hidden_size']}) is not a multiple of "
                                       f"num_attention_heads ({heads}) and no head_dim is given")
    return cfg


def safetensors_header(file: Path) -> dict:
    """{tensor name: (dtype, shape)} from a safetensors file's header, after checking that the
    header is whole and that the file holds every byte the header promises (a truncated
    download fails here, not as a SafetensorError inside transformers)."""
    redownload = "download it again"
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < n <= min(size - 8, _MAX_HEADER):
                raise VerilensError(f"{file} is not a complete safetensors file ({size} bytes; its header is "
                                    f"cut off or missing); {redownload}")
            header = json.loads(f.read(n))
    except OSError as e:
        raise VerilensError(f"cannot read {file}: {e}") from e
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise VerilensError(f"{file}: the safetensors header is not valid JSON ({str(e)[:100]}); {redownload}") from e
    if not isinstance(header, dict):
        raise VerilensError(f"{file}: the safetensors header is not a JSON object; {redownload}")
    data, end, out = size - 8 - n, 0, {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = t["dtype"], t["shape"], t["data_offsets"]
            ok = all(type(x) is int and x >= 0 for x in (*shape, a, b)) and a <= b
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise VerilensError(f"{file}: tensor {name!r} has a malformed header entry; {redownload}")
        if dtype in _ITEMSIZE and math.prod(shape) * _ITEMSIZE[dtype] != b - a:
            raise VerilensError(f"{file}: tensor {name!r} of shape {shape} ({dtype}) does not fit its {b - a} bytes; "
                                f"{redownload}")
        end = max(end, b)
        out[name] = (dtype, list(shape))
    if end != data:
        raise VerilensError(f"{file} is {'truncated' if end > data else 'corrupt'}: its header needs {end} bytes of "
                            f"tensor data, the file holds {data}; {redownload}")
    return out


def _weight_files(path: Path) -> tuple[list[Path], list[Path]]:
    """(safetensors files, torch .bin files) of the folder, from the shard index if there is one."""
    for index, kind in (("model.safetensors.index.json", "st"), ("pytorch_model.bin.index.json", "bin")):
        if (path / index).exists():
            try:
                files = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
                assert all(isinstance(f, str) for f in files)
            except (OSError, ValueError, KeyError, TypeError, AttributeError, AssertionError, RecursionError) as e:
                raise VerilensError(f"{path / index} is not a valid shard index ({str(e)[:100]}); "
                                    "download the model folder again") from e
            missing = [f for f in files if not (path / f).is_file()]
            if missing:
                raise VerilensError(f"{path}: weight shards named in {index} are missing: {', '.join(missing[:5])}; "
                                    "download them (all shards are needed)")
            return ([path / f for f in files], []) if kind == "st" else ([], [path / f for f in files])
    st = [path / "model.safetensors"] if (path / "model.safetensors").is_file() else []
    bins = [path / "pytorch_model.bin"] if (path / "pytorch_model.bin").is_file() else []
    if not st and not bins:
        raise VerilensError(f"{path} holds no weights (model.safetensors, pytorch_model.bin or a sharded index); "
                            "download the full model folder")
    return st, bins


def _expected_shapes(cfg: dict) -> list[tuple[re.Pattern, list[int]]]:
    d, heads, inter = cfg["hidden_size"], cfg["num_attention_heads"], cfg.get("intermediate_size")
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or d // heads
    rules = [(r"embed_tokens\.weight", [cfg["vocab_size"], d]), (r"lm_head\.weight", [cfg["vocab_size"], d]),
             (r"self_attn\.q_proj\.weight", [heads * hd, d]), (r"self_attn\.k_proj\.weight", [kv * hd, d]),
             (r"self_attn\.v_proj\.weight", [kv * hd, d]), (r"self_attn\.o_proj\.weight", [d, heads * hd])]
    if inter:
        rules += [(r"mlp\.gate_proj\.weight", [inter, d]), (r"mlp\.up_proj\.weight", [inter, d]),
                  (r"mlp\.down_proj\.weight", [d, inter])]
    return [(re.compile(r"(?:^|\.)" + p + "$"), s) for p, s in rules]


_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def check_weight_files(path: Path) -> dict:
    """Check that the folder's weight files are present and whole; returns {tensor name:
    (file, shape)} of its safetensors files (empty for torch .bin weights)."""
    st_files, bin_files = _weight_files(path)
    for f in bin_files:  # a torch zip checkpoint: a truncated one has no end-of-archive record
        with open(f, "rb") as fh:
            is_zip_format = fh.read(2) == b"PK"
        if is_zip_format and not zipfile.is_zipfile(f):
            raise VerilensError(f"{f} is truncated (an incomplete zip archive); download it again")
    tensors = {}
    for f in st_files:
        tensors.update({name: (f, shape) for name, (_, shape) in safetensors_header(f).items()})
    return tensors


def check_model_folder(path: Path) -> dict:
    """Check config.json and the weight files of a causal LM folder; returns the config."""
    cfg = read_config(path / "config.json")
    tensors = check_weight_files(path)
    if not tensors or cfg.get("quantization_config"):
        return cfg  # quantised weights have other shapes; torch .bin shapes need the whole file
    rules = _expected_shapes(cfg)
    for name, (f, shape) in tensors.items():
        for pattern, want in rules:
            if pattern.search(name) and shape != want:
                raise VerilensError(
                    f"{f}: tensor {name} has shape {shape}, but config.json (hidden_size {cfg['hidden_size']}, "
                    f"{cfg['num_attention_heads']} heads, intermediate_size {cfg.get('intermediate_size')}, "
                    f"vocab_size {cfg['vocab_size']}) needs {want}: the weights and config.json are from different "
                    "models; download the folder again")
    layers = {int(m.group(1)) for name in tensors if (m := _LAYER_RE.search(name))}
    if layers and layers != set(range(cfg["num_hidden_layers"])):
        raise VerilensError(f"{path}: config.json says {cfg['num_hidden_layers']} layers, the weights hold layers "
                            f"{min(layers)}..{max(layers)} ({len(layers)} of them); the weights and config.json are "
                            "from different models, or shards are missing")
    return cfg
