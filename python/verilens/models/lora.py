"""LoRA deltas in PEFT's folder format (adapter_config.json + adapter_model.safetensors):
read, checked against the base model, merged into its weights at load time; written by
`verilens train countdown-smol`.

Merging needs no PEFT: W += (alpha / r) * B @ A per adapted Linear (alpha / sqrt(r) with
rsLoRA), computed in float32 whatever the model's dtype, so a bf16 model gets the
rounding of one cast, not of a bf16 product. Only plain LoRA on Linear layers is read;
anything PEFT can also save (DoRA, per-module ranks, extra trained modules, bias) is
refused by name rather than half applied."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import VerilensError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's key prefix: the wrapper, then the model's own names


def is_adapter_folder(path: Path) -> bool:
    return (path / CONFIG).is_file() and not (path / "config.json").exists()


def read_adapter_config(path: Path) -> dict:
    try:
        cfg = json.loads((path / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise VerilensError(f"{path / CONFIG} cannot be read ({str(e)[:80]}); copy the adapter folder again") from e
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise VerilensError(f"{path / CONFIG} is not a LoRA adapter (peft_type {cfg.get('peft_type') if isinstance(cfg, dict) else cfg!r}); "
                            "verilens merges LoRA adapters only")
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform",
                               "lora_bias", "layer_replication", "trainable_token_indices", "target_parameters",
                               "alora_invocation_tokens", "fan_in_fan_out") if cfg.get(k)]
    if cfg.get("bias", "none") != "none":
        unsupported.append(f"bias={cfg['bias']!r}")
    if unsupported:
        raise VerilensError(f"{path / CONFIG} uses {', '.join(unsupported)}, which verilens does not merge; merge it "
                            "with PEFT (model.merge_and_unload()), save the model folder and load that")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not (isinstance(r, int) and r > 0 and isinstance(alpha, (int, float)) and alpha > 0):
        raise VerilensError(f"{path / CONFIG}: r={r!r}, lora_alpha={alpha!r}; both must be positive numbers")
    base = cfg.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise VerilensError(f"{path / CONFIG} names no base model (base_model_name_or_path); set it to the base's folder "
                            "or .gguf file")
    return cfg


def read_deltas(path: Path, cfg: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (A [r, in], B [out, r])} from the adapter's weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = path / WEIGHTS
    if not file.is_file():
        raise VerilensError(f"{path} holds {CONFIG} but no {WEIGHTS}; copy the adapter folder again")
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        raise VerilensError(f"{file} is damaged ({str(e)[:80]}); copy the adapter folder again") from e
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        for part in ("lora_A", "lora_B"):
            tail = f".{part}.weight"
            if key.startswith(PREFIX) and key.endswith(tail):
                pairs.setdefault(key[len(PREFIX):-len(tail)], {})[part] = t
                break
        else:
            raise VerilensError(f"{file}: tensor {key!r} is not a LoRA A or B matrix; verilens merges plain LoRA only")
    r = cfg["r"]
    out = {}
    for name, d in sorted(pairs.items()):
        if set(d) != {"lora_A", "lora_B"}:
            raise VerilensError(f"{file}: module {name} has {sorted(d)} but needs lora_A and lora_B")
        a, b = d["lora_A"], d["lora_B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise VerilensError(f"{file}: module {name} has A {list(a.shape)} and B {list(b.shape)}, not rank {r} "
                                f"([{r}, in] and [out, {r}])")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise VerilensError(f"{file}: module {name} holds NaN or inf; the adapter is damaged")
        out[name] = (a, b)
    if not out:
        raise VerilensError(f"{file} holds no LoRA matrices")
    return out


def merge_adapter(hf_model, path) -> list[str]:
    """Add the LoRA delta of the adapter folder `path` into `hf_model`'s weights, in place
    (before any dispatch). Every delta is checked against the module it targets before
    any weight changes, so a mismatched adapter leaves the model untouched. Returns the
    merged module names."""
    path = Path(path)
    cfg = read_adapter_config(path)
    deltas = read_deltas(path, cfg)
    scale = cfg["lora_alpha"] / (cfg["r"] ** 0.5 if cfg.get("use_rslora") else cfg["r"])
    modules = dict(hf_model.named_modules())
    for name, (a, b) in deltas.items():
        m = modules.get(name)
        if not isinstance(m, torch.nn.Linear):
            raise VerilensError(f"the adapter in {path} changes {name}, which this model "
                                f"({type(hf_model).__name__}) {'has not' if m is None else 'has, but not as a Linear'}: "
                                "the adapter was trained on another base model")
        if (b.shape[0], a.shape[1]) != tuple(m.weight.shape):
            raise VerilensError(f"the adapter in {path} changes {name} by a [{b.shape[0]}, {a.shape[1]}] delta, but the "
                                f"base's weight is {list(m.weight.shape)}: the adapter was trained on another base model")
    with torch.no_grad():
        for name, (a, b) in deltas.items():
            w = modules[name].weight
            w.copy_((w.float() + scale * (b.float() @ a.float())).to(w.dtype))
    return list(deltas)


def write_adapter(lora_state: dict[str, torch.Tensor], config: dict, path, extra_files: dict[str, str] | None = None,
                  dtype=torch.float16) -> Path:
    """Write a PEFT-format adapter folder atomically: `lora_state` is PEFT's
    `get_peft_model_state_dict` (keys under `base_model.model.`), stored in `dtype`;
    `config` is the LoraConfig as a dict (sets written as sorted lists). `extra_files`: {name: text} written beside."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().to(dtype).contiguous() for k, v in lora_state.items()}, tmp / WEIGHTS)
    (tmp / CONFIG).write_text(json.dumps(config, indent=1, default=sorted))
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path
