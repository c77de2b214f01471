"""Checks of a Hugging Face model folder before transformers reads it.

transformers answers a config value of the wrong type or a truncated weight file with an
exception from deep inside huggingface_hub or safetensors (or, for some, a model with
random weights and a warning). These checks read only config.json and the safetensors
headers, or a GGUF file's header (a few kilobytes to megabytes, whatever the model's size),
and say what is wrong and what to do."""
from __future__ import annotations

import json
import math
import mmap
import re
import struct
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


def _read_index(path: Path, index: str) -> dict[str, str]:
    """{tensor name: shard file name} of a shard index, after checking every shard is there."""
    try:
        weight_map = json.loads((path / index).read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(k, str) and isinstance(v, str) and v and "/" not in v and "\\" not in v
                for k, v in weight_map.items()):
            raise ValueError("its weight_map is not a mapping of tensor names to shard file names in the folder")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        why = str(e)[:100]
        raise VerilensError(f"{path / index} is not a valid shard index ({why}); download the model folder "
                            "again") from e
    missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
    if missing:
        raise VerilensError(f"{path}: weight shards named in {index} are missing: {', '.join(missing[:5])}; "
                            "download them (all shards are needed)")
    return weight_map


def _weight_files(path: Path) -> tuple[list[Path], dict[str, str] | None, str | None]:
    """(weight files transformers would read, {tensor: shard} of the shard index or None, the index's
    name), in transformers' order of preference: model.safetensors, its shard index,
    pytorch_model.bin, its shard index."""
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"], None, None
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if single != "model.safetensors" and (path / single).is_file():
            return [path / single], None, None
        if (path / index).exists():
            weight_map = _read_index(path, index)
            return [path / f for f in sorted(set(weight_map.values()))], weight_map, index
    raise VerilensError(f"{path} holds no weights (model.safetensors, pytorch_model.bin or a sharded index); "
                        "download the full model folder")


def torch_checkpoint_shapes(file: Path) -> dict[str, list[int]] | None:
    """{tensor name: shape} of a torch checkpoint (pytorch_model.bin) from its pickle alone: the
    zip archive is checked whole (a truncated one has no central directory) and every record
    inside the file, then unpickled with weights_only onto the meta device from a memory map,
    so no weight is read. None for the legacy (pre-zip) format, whose shapes cannot be had
    without reading the weights (transformers then reads it, and a failure is still one error)."""
    import torch

    redownload = "download it again"
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            magic = fh.read(4)
        if magic[:1] == b"\x80":  # a pickle: the legacy format
            return None
        if magic != b"PK\x03\x04":
            raise VerilensError(f"{file} is not a torch checkpoint (neither a zip archive nor a pickle); {redownload}")
        if not zipfile.is_zipfile(file):
            raise VerilensError(f"{file} is truncated (an incomplete zip archive, {size} bytes); {redownload}")
        with zipfile.ZipFile(file) as z:
            for info in z.infolist():  # records laid out past the end of the file, or compressed (torch never)
                if info.header_offset + info.compress_size > size or info.compress_size != info.file_size:
                    raise VerilensError(f"{file} is damaged (its record {info.filename} does not fit the file); "
                                        f"{redownload}")
    except OSError as e:
        raise VerilensError(f"cannot read {file}: {e}") from e
    except (zipfile.BadZipFile, ValueError, EOFError) as e:
        raise VerilensError(f"{file} is not a valid torch checkpoint ({str(e)[:100]}); {redownload}") from e
    try:
        sd = torch.load(file, mmap=True, weights_only=True, map_location="meta")
    except Exception as e:  # a damaged archive or a pickle with anything but tensors (weights_only refuses it)
        raise VerilensError(f"{file} is not a valid torch checkpoint ({type(e).__name__}: {str(e)[:150]}); "
                            f"{redownload}") from e
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise VerilensError(f"{file} is not a state dict (a mapping of tensor names to tensors); {redownload}")
    return {k: list(v.shape) for k, v in sd.items()}


def check_weight_files(path: Path) -> dict:
    """Check that the folder's weight files are present and whole, and that every tensor a
    shard index lists is in its shard; returns {tensor name: (file, shape)} (read from the
    safetensors headers and the torch pickles; empty for a legacy-format .bin)."""
    files, weight_map, index = _weight_files(path)
    tensors, per_file = {}, {}
    for f in files:
        shapes = ({n: s for n, (_, s) in safetensors_header(f).items()} if f.suffix == ".safetensors"
                  else torch_checkpoint_shapes(f))
        per_file[f.name] = shapes
        tensors.update({name: (f, shape) for name, shape in (shapes or {}).items()})
    for name, shard in (weight_map or {}).items():
        if per_file.get(shard) is not None and name not in per_file[shard]:
            raise VerilensError(f"{path / shard} does not hold the tensor {name} that {index} places in it: the "
                                "shards and the index are from different downloads; download the model folder again")
    return tensors


def _expected_shapes(cfg: dict) -> list[tuple[re.Pattern, list[int]]]:
    d, heads, inter = cfg["hidden_size"], cfg["num_attention_heads"], cfg.get("intermediate_size")
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or d // heads
    rules = [(r"embed_tokens\.weight", [cfg["vocab_size"], d]), (r"lm_head\.weight", [cfg["vocab_size"], d]),
             (r"self_attn\.q_proj\.weight", [heads * hd, d]), (r"self_attn\.k_proj\.weight", [kv * hd, d]),
             (r"self_attn\.v_proj\.weight", [kv * hd, d]), (r"self_attn\.o_proj\.weight", [d, heads * hd]),
             (r"self_attn\.q_proj\.bias", [heads * hd]), (r"self_attn\.k_proj\.bias", [kv * hd]),
             (r"self_attn\.v_proj\.bias", [kv * hd]), (r"self_attn\.o_proj\.bias", [d]),
             (r"self_attn\.[qk]_norm\.weight", [hd]),
             (r"(?:input|post_attention|pre_feedforward|post_feedforward)_layernorm\.weight", [d]),
             (r"norm\.weight", [d])]
    if inter:
        rules += [(r"mlp\.gate_proj\.weight", [inter, d]), (r"mlp\.up_proj\.weight", [inter, d]),
                  (r"mlp\.down_proj\.weight", [d, inter]), (r"mlp\.(?:gate|up)_proj\.bias", [inter]),
                  (r"mlp\.down_proj\.bias", [d])]
    return [(re.compile(r"(?:^|\.)" + p + "$"), s) for p, s in rules]


_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
# tensors every layer of every supported family has (transformers would fill a missing one with
# random numbers and only warn)
_LAYER_TENSORS = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                  "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                  "input_layernorm.weight")


def _check_complete(path: Path, cfg: dict, tensors: dict) -> None:
    """Every tensor the config implies is there: embeddings, the final norm, each layer's
    projections and input norm, and lm_head when config.json says it is not tied."""
    per_layer: dict[int, set] = {}
    for name in tensors:
        if m := _LAYER_RE.search(name):
            per_layer.setdefault(int(m.group(1)), set()).add(m.group(2))
    layers, n = set(per_layer), cfg["num_hidden_layers"]
    if layers != set(range(n)):
        raise VerilensError(f"{path}: config.json says {n} layers, the weights hold layers "
                            f"{min(layers, default='-')}..{max(layers, default='-')} ({len(layers)} of them); the "
                            "weights and config.json are from different models, or shards are missing")
    where = ", ".join(sorted({f.name for f, _ in tensors.values()}))
    for i in range(n):
        missing = [t for t in _LAYER_TENSORS if t not in per_layer[i]]
        if missing:
            raise VerilensError(f"{path}: layer {i} has no {', '.join(missing[:3])} in {where}; the weight files "
                                "are incomplete or not of this model family; download the model folder again")
    outside = [name for name in tensors if not _LAYER_RE.search(name)]
    needed = [("embed_tokens.weight", r"(?:^|\.)embed_tokens\.weight$"), ("norm.weight", r"(?:^|\.)norm\.weight$")]
    if cfg.get("tie_word_embeddings") is False:
        needed.append(("lm_head.weight", r"(?:^|\.)lm_head\.weight$"))
    for label, pattern in needed:
        if not any(re.search(pattern, name) for name in outside):
            raise VerilensError(f"{path}: the weights ({where}) have no {label}; the weight files are incomplete; "
                                "download the model folder again")


def check_model_folder(path: Path) -> dict:
    """Check config.json and the weight files of a causal LM folder: present, whole, every
    tensor the config implies there and of the config's shape; returns the config."""
    cfg = read_config(path / "config.json")
    tensors = check_weight_files(path)
    if not tensors or cfg.get("quantization_config"):
        return cfg  # quantised weights have other shapes; a legacy .bin's shapes need the whole file
    rules = _expected_shapes(cfg)
    for name, (f, shape) in tensors.items():
        for pattern, want in rules:
            if pattern.search(name) and shape != want:
                raise VerilensError(
                    f"{f}: tensor {name} has shape {shape}, but config.json (hidden_size {cfg['hidden_size']}, "
                    f"{cfg['num_attention_heads']} heads, {cfg.get('num_key_value_heads') or cfg['num_attention_heads']}"
                    f" key/value heads, head_dim {cfg.get('head_dim') or cfg['hidden_size'] // cfg['num_attention_heads']}"
                    f", intermediate_size {cfg.get('intermediate_size')}, vocab_size {cfg['vocab_size']}) needs "
                    f"{want}: the weights and config.json are from different models; download the folder again")
    _check_complete(path, cfg, tensors)
    return cfg


def check_gguf_file(file: Path) -> None:
    """Check a .gguf file before transformers reads it: the header and metadata parse, it
    lists tensors, and every tensor's data (offset + size) lies inside the file. Only the
    header is read (`_gguf_tensor_table`), no weight. (Without the gguf package, whose table
    of block sizes this uses, the check is skipped; loading then asks for the package.)"""
    try:
        import gguf
    except ImportError:
        return
    redownload = "download it again (or pass a model folder)"
    try:
        size = file.stat().st_size
    except OSError as e:
        raise VerilensError(f"cannot read {file}: {e}") from e
    if size == 0:
        raise VerilensError(f"{file} is empty, not a GGUF model; {redownload}")
    try:
        with open(file, "rb") as fh:
            magic = fh.read(4)
            if magic != b"GGUF":
                raise VerilensError(f"{file} is not a GGUF file (it does not start with the GGUF magic bytes); "
                                    f"{redownload}")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                tensors = _gguf_tensor_table(buf, gguf.GGML_QUANT_SIZES)
    except OSError as e:
        raise VerilensError(f"cannot read {file}: {e}") from e
    except (struct.error, ValueError, KeyError) as e:  # a read past the end, or a field no GGUF holds
        raise VerilensError(f"{file} is truncated or damaged ({size} bytes; its header, metadata or tensor table "
                            f"cannot be read: {type(e).__name__}: {str(e)[:120]}); {redownload}") from e
    if not tensors:
        raise VerilensError(f"{file} holds no tensors (a GGUF header without weights); {redownload}")
    name, end = max(tensors, key=lambda t: t[1])
    if end > size:
        raise VerilensError(f"{file} is truncated or damaged: its tensor {name} ends at byte {end}, the file "
                            f"holds {size}; {redownload}")


# GGUF metadata value types (the GGUF spec): fixed sizes in bytes; 8 is a string, 9 an array
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_tensor_table(buf, quant_sizes) -> list[tuple[str, int]]:
    """(name, end byte of its data) of every tensor of a GGUF file (v2/v3, either byte order),
    walking the header as the GGUF spec lays it out. The gguf package's GGUFReader reads the
    same, but builds a numpy view per metadata element: ~3 s for SmolLM2's 100k vocabulary
    strings, where this takes milliseconds. Raises struct.error on a read past the end,
    ValueError / KeyError on a field no GGUF holds."""
    order = "<"
    version, = struct.unpack_from("<I", buf, 4)
    if version & 0xFFFF == 0:  # a big-endian file (the version reads byte-swapped)
        order = ">"
        version, = struct.unpack_from(">I", buf, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version}; transformers reads versions 2 and 3")
    n_tensors, n_kv = struct.unpack_from(order + "QQ", buf, 8)
    pos = 24

    def u(fmt):
        nonlocal pos
        value, = struct.unpack_from(order + fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def skip(n):
        nonlocal pos
        if n > len(buf) - pos:
            raise ValueError(f"a field of {n} bytes at byte {pos} runs past the end")
        pos += n

    def string():
        n = u("Q")
        start = pos
        skip(n)
        return bytes(buf[start:pos]).decode("utf-8", "replace")

    def value(kind):
        if kind in _GGUF_SIZES:
            skip(_GGUF_SIZES[kind])
        elif kind == _GGUF_STRING:
            skip(u("Q"))
        elif kind == _GGUF_ARRAY:
            item, count = u("I"), u("Q")
            if item in _GGUF_SIZES:
                skip(count * _GGUF_SIZES[item])
            else:  # strings or nested arrays: each takes at least 8 bytes, so a false count runs out of file
                for _ in range(count):
                    value(item)
        else:
            raise ValueError(f"metadata value type {kind} at byte {pos}")

    alignment = 32  # GGUF's default
    for _ in range(n_kv):
        key, kind = string(), u("I")
        if key == "general.alignment" and kind == 4:
            alignment = u("I")
            if alignment == 0 or alignment & (alignment - 1):
                raise ValueError(f"general.alignment {alignment} is not a power of two")
        else:
            value(kind)
    infos = []
    for _ in range(n_tensors):
        name, n_dims = string(), u("I")
        if n_dims > 4:
            raise ValueError(f"tensor {name} has {n_dims} dimensions (GGUF allows 4)")
        dims = [u("Q") for _ in range(n_dims)]
        kind, offset = u("I"), u("Q")
        block, block_bytes = quant_sizes[kind]  # KeyError: a tensor type no GGUF reader knows
        infos.append((name, offset, math.prod(dims) // block * block_bytes))
    start = -(-pos // alignment) * alignment  # the data section begins at the next aligned byte
    return [(name, start + offset + n) for name, offset, n in infos]
