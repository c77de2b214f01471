"""`verilens.load(..., device_map=...)`: checks of a device_map before anything loads, and
the dispatch of a model loaded whole (a dequantised GGUF) by accelerate.

transformers answers a device name that does not exist here with "Torch not compiled with
CUDA enabled" or "Cannot access accelerator device", a map that misses a module with
"weight is on the meta device, we need a `value`", and a map naming "meta" by loading
every weight on the meta device without a word. These checks say what is wrong and what
to do, before a byte of the weights is read."""
from __future__ import annotations

import difflib

import torch

from ..errors import VerilensError

AUTO_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
_FIX = "use 'cpu', 'disk' (with offload_folder=DIR), a GPU index that exists here, or device_map='auto'"


def _accelerator(kind: str):
    """(is_available, device_count) of a device type torch knows (cuda, xpu, mps, npu, ...)."""
    if kind == "mps":
        ok = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        return ok, int(ok)
    mod = getattr(torch, kind, None)
    if mod is None or not hasattr(mod, "is_available"):
        return False, 0
    ok = bool(mod.is_available())
    return ok, (mod.device_count() if ok and hasattr(mod, "device_count") else int(ok))


def check_device(value, what: str) -> str:
    """The device type of one device_map / max_memory value ('cpu', 'disk', 'cuda', ...);
    a VerilensError for one that does not exist on this machine."""
    if isinstance(value, bool) or not isinstance(value, (int, str, torch.device)):
        raise VerilensError(f"{what}: {value!r} is not a device; {_FIX}")
    if isinstance(value, int):
        if value < 0:
            raise VerilensError(f"{what}: GPU index {value} is negative; {_FIX}")
        ok, n = _accelerator("cuda")
        if value >= n:
            have = f"{n} GPU(s) visible" if ok else "this machine has no GPU (CUDA is not available)"
            raise VerilensError(f"{what}: GPU {value} does not exist here ({have}); {_FIX}")
        return "cuda"
    s = str(value)
    if s == "disk":
        return "disk"
    if s == "meta":
        raise VerilensError(f"{what}: 'meta' holds no weights (every forward would fail); {_FIX}")
    try:
        dev = torch.device(s)
    except (RuntimeError, TypeError):
        raise VerilensError(f"{what}: unknown device {s!r}; {_FIX}") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type == "meta":
        raise VerilensError(f"{what}: 'meta' holds no weights (every forward would fail); {_FIX}")
    ok, n = _accelerator(dev.type)
    if not ok:
        raise VerilensError(f"{what}: device {s!r} asked for, but {dev.type} is not available here; {_FIX}")
    if dev.index is not None and dev.index >= n:
        raise VerilensError(f"{what}: device {s!r} does not exist here ({n} {dev.type} device(s) visible); {_FIX}")
    return dev.type


def check_device_map_values(device_map, max_memory) -> bool:
    """Check the devices a device_map and max_memory name; True when a GPU is among them
    (or, for the automatic maps, when CUDA is available): bfloat16 is then the default."""
    if isinstance(max_memory, dict):
        for k in max_memory:
            check_device(k, f"max_memory key {k!r}")
    elif max_memory is not None:
        raise VerilensError(f"max_memory must be a dict {{device: size}} (e.g. {{0: '20GiB', 'cpu': '60GiB'}}), got "
                            f"{type(max_memory).__name__}")
    if isinstance(device_map, str) and device_map in AUTO_MAPS:
        return torch.cuda.is_available()
    if isinstance(device_map, (str, int, torch.device)) and not isinstance(device_map, bool):
        kind = check_device(device_map, "device_map")
        if kind == "disk":
            raise VerilensError("device_map='disk' leaves nothing to compute on: map some modules to 'cpu' or a GPU")
        return kind == "cuda"
    if not isinstance(device_map, dict) or not device_map:
        raise VerilensError(f"device_map must be one of {', '.join(map(repr, AUTO_MAPS))}, a device, or a non-empty "
                            f"dict {{module name: device}}; got {device_map!r}"[:300])
    kinds = set()
    for k, v in device_map.items():
        if not isinstance(k, str):
            raise VerilensError(f"device_map keys are module names (strings, '' for the whole model), got {k!r}")
        kinds.add(check_device(v, f"device_map[{k!r}]"))
    if kinds == {"disk"}:
        raise VerilensError("device_map sends every module to 'disk': map some modules to 'cpu' or a GPU")
    return "cuda" in kinds


def _meta_model(path_or_name):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path_or_name)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def check_map_covers(model, device_map: dict, source: str) -> None:
    """Every key names a module (or parameter) of `model`, and every parameter and buffer
    falls under a key: otherwise it would stay on the meta device."""
    modules = {n for n, _ in model.named_modules()}
    tensors = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    for k in device_map:
        if k and k not in modules and k not in tensors:
            close = difflib.get_close_matches(k, sorted(modules), n=3)
            raise VerilensError(f"device_map names {k!r}, which is not a module of {source}"
                                f"{'; did you mean ' + ', '.join(map(repr, close)) + '?' if close else ''}")
    if "" in device_map:
        return
    keys = sorted(device_map, key=len)
    stranded = [t for t in tensors if not any(t == k or t.startswith(k + ".") for k in keys)]
    if stranded:
        owners = _top_modules(stranded, tensors, modules)
        shown = ", ".join(repr(o) for o in owners[:6]) + (f" and {len(owners) - 6} more" if len(owners) > 6 else "")
        raise VerilensError(f"device_map gives no device to {shown} of {source} (it would stay on the meta device); "
                            f"add them to the map (e.g. {{{owners[0]!r}: 'cpu'}}) or use device_map='auto'")


def _top_modules(stranded: list, tensors: list, modules: set) -> list:
    """The outermost modules all of whose tensors are in `stranded` (plus stranded tensors
    outside any such module), in the model's order: "model.layers.4", not its 9 Linears."""
    lost = set(stranded)
    under = {}
    for t in tensors:
        parts = t.split(".")
        for i in range(1, len(parts)):
            under.setdefault(".".join(parts[:i]), []).append(t)
    whole = {m for m, ts in under.items() if m in modules and all(t in lost for t in ts)}
    top = {m for m in whole if not any(m.startswith(o + ".") for o in whole if o != m)}
    out = []
    for t in stranded:
        owner = next((m for m in top if t.startswith(m + ".")), t)
        if owner not in out:
            out.append(owner)
    return out


def check_device_map_modules(path_or_name, device_map, source: str) -> None:
    """check_map_covers against the model's module tree, built on the meta device from its
    config (no weights read)."""
    if not isinstance(device_map, dict):
        return
    try:
        model = _meta_model(path_or_name)
    except Exception as e:  # the config is the user's file
        raise VerilensError(f"could not read the config of {source} to check the device_map: {type(e).__name__}: "
                            f"{str(e)[:200]}") from e
    check_map_covers(model, device_map, source)


def dispatch_kwargs(device_map, max_memory, offload_folder) -> dict:
    """The from_pretrained keyword arguments of a placement (transformers passes them to accelerate)."""
    out = {"device_map": device_map}
    if max_memory is not None:
        out["max_memory"] = max_memory
    if offload_folder is not None:
        out["offload_folder"] = str(offload_folder)
    return out


def dispatch_loaded(model, device_map, max_memory, offload_folder, source: str) -> None:
    """Dispatch a model loaded whole on the CPU (a dequantised GGUF, which transformers
    does not offload) by accelerate, as from_pretrained would have."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if isinstance(device_map, str) and device_map in AUTO_MAPS:
        budget = max_memory
        if device_map != "sequential":
            budget = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                         low_zero=device_map == "balanced_low_0")
        device_map = infer_auto_device_map(model, max_memory=budget, no_split_module_classes=no_split)
    elif not isinstance(device_map, dict):
        device_map = {"": device_map}
    else:
        check_map_covers(model, device_map, source)
    if "disk" in [str(v) for v in device_map.values()] and offload_folder is None:
        raise VerilensError(f"{source}: the device_map sends modules to disk: pass offload_folder=DIR (where the "
                            "dequantised weights are written)")
    dispatch_model(model, device_map=device_map, offload_dir=None if offload_folder is None else str(offload_folder))
    model.hf_device_map = dict(device_map)


def rank_max_memory(device_map, max_memory, local_rank: int, local_world: int, n_gpus: int, free_memory):
    """Under torchrun with `local_world` ranks on this node, each holding one replica spread by
    an automatic device_map: the max_memory that keeps this rank's replica on its own block of
    the node's GPUs (local rank r of k ranks on n GPUs gets GPUs [r * (n // k), (r + 1) * (n // k))),
    so that the ranks do not pile onto the same devices. A budget the user gave for a GPU of the
    block, or for "cpu" / "disk", is kept; otherwise a GPU gets its free memory and the CPU an
    equal share of the node's available RAM (`free_memory(device)`, bytes; only the block's GPUs
    are asked, so no rank touches another's). None (nothing to change) for one rank per node, a
    map that is not automatic, or no GPU."""
    if not 0 <= local_rank < local_world:
        raise VerilensError(f"LOCAL_RANK={local_rank} but LOCAL_WORLD_SIZE={local_world}: they do not fit together "
                            "(torchrun sets both)")
    if local_world <= 1 or not (isinstance(device_map, str) and device_map in AUTO_MAPS) or n_gpus == 0:
        return None
    per = n_gpus // local_world
    if per == 0:
        raise VerilensError(f"{local_world} ranks on this node share {n_gpus} GPU(s): with device_map={device_map!r} "
                            f"each rank spreads its replica over GPUs of its own; use --nproc_per_node <= {n_gpus}")
    given = dict(max_memory or {})
    out = {g: given.get(g, free_memory(g)) for g in range(local_rank * per, (local_rank + 1) * per)}
    out["cpu"] = given.get("cpu", free_memory("cpu") // local_world)
    if "disk" in given:
        out["disk"] = given["disk"]
    return out


def check_map_under_ranks(device_map, local_world: int) -> None:
    """An explicit map is the same on every rank: with several ranks on a node, one that names
    GPUs would put all their replicas on the same GPUs."""
    if local_world > 1 and isinstance(device_map, dict) and any(_names_gpu(v) for v in device_map.values()):
        raise VerilensError(f"an explicit device_map that names GPUs is the same on all {local_world} ranks of this "
                            "node, so their replicas would share those GPUs: use device_map='auto' (each rank then "
                            "gets its own block of the node's GPUs) or one rank per node")


def _names_gpu(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    try:
        return torch.device(value).type == "cuda"
    except (RuntimeError, TypeError):
        return False
