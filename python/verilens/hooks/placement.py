"""Where a model's weights and activations live, for models dispatched by accelerate
(`verilens.load(..., device_map=...)` or a Hugging Face model loaded with a device_map).

accelerate runs each module on its *execution device*: a module whose weights were
offloaded (to the CPU from a GPU model, or to disk) holds them on the meta device and an
`AlignDevicesHook` loads them for the duration of its forward, after moving the inputs
to the execution device. Everything verilens reads outside a forward (the weight views
of `HookedModel.layer_weights`, the fused ops' o_proj / GLU weights, norm gains, biases)
goes through `materialized` / `read_weights` here, so it sees the real weights, never
meta tensors. On a model that is not dispatched every helper is a no-op."""
from __future__ import annotations

import contextlib

import torch

from ..errors import VerilensError


def hf_hook(module):
    return getattr(module, "_hf_hook", None)


def is_dispatched(hf_model) -> bool:
    """True for a model whose modules carry accelerate hooks (a device_map)."""
    return hf_hook(hf_model) is not None or any(hf_hook(m) is not None for m in hf_model.modules())


def is_offloaded(module) -> bool:
    """The module's own weights live off its execution device (loaded at forward time)."""
    hook = hf_hook(module)
    return hook is not None and bool(getattr(hook, "offload", False))


def execution_device(module) -> torch.device | None:
    """The device the module computes on: its accelerate hook's execution device, else the
    device of its first parameter or buffer that is not on the meta device."""
    hook = hf_hook(module)
    dev = getattr(hook, "execution_device", None) if hook is not None else None
    if dev is not None:
        return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
    for t in (*module.parameters(), *module.buffers()):
        if not t.is_meta:
            return t.device
    return None


@contextlib.contextmanager
def materialized(*modules):
    """Inside the block, every offloaded module among `modules` and their submodules holds
    its real weights on its execution device (accelerate's own onload/offload, as its
    forward does); outside, they are offloaded again. Tensors read inside must be copied
    to outlive the block (`read_weights` does)."""
    targets = [m for mod in modules if mod is not None for m in mod.modules() if is_offloaded(m)]
    if not targets:
        yield
        return
    from accelerate.utils import align_module_device

    with contextlib.ExitStack() as stack:
        for m in targets:
            stack.enter_context(align_module_device(m))
        yield


def read_weights(modules, fn):
    """fn() with `modules`' weights in place. On offloaded modules the tensors fn returns
    (a tensor, or a dict / list / tuple of them) are detached copies, since the real ones
    are freed again when the block ends; otherwise fn's own results (views) are returned."""
    modules = [m for m in modules if m is not None]
    if not any(is_offloaded(m) for mod in modules for m in mod.modules()):
        return fn()
    with materialized(*modules):
        out = fn()

        def copy(x):
            if isinstance(x, torch.Tensor):
                return x.detach().clone()
            if isinstance(x, dict):
                return {k: copy(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return type(x)(copy(v) for v in x)
            return x
        return copy(out)


def input_device(hf_model) -> torch.device:
    """Where the model's inputs go (and its outputs come back): the root hook's execution
    device for a dispatched model (accelerate's main device), else its embedding's device."""
    root = hf_hook(hf_model)
    dev = getattr(root, "execution_device", None) if root is not None else None
    if dev is not None:
        return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
    try:
        emb = hf_model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        emb = None
    dev = execution_device(emb) if emb is not None else None
    return dev or execution_device(hf_model) or torch.device("cpu")


def check_placement(hf_model, what: str = "the model") -> None:
    """Raise unless every parameter and buffer is either real or offloaded by accelerate
    (loaded at forward time): one left on the meta device would make every forward fail,
    or compute with empty weights."""
    stranded = []
    for mname, m in hf_model.named_modules():
        hook = hf_hook(m)
        wmap = getattr(hook, "weights_map", None) if is_offloaded(m) else None
        for tensors in (m.named_parameters(recurse=False), m.named_buffers(recurse=False)):
            for tname, t in tensors:
                if t is None or not t.is_meta:
                    continue
                if wmap is not None and tname in wmap:
                    continue
                stranded.append(f"{mname}.{tname}" if mname else tname)
    if stranded:
        more = f" (and {len(stranded) - 5} more)" if len(stranded) > 5 else ""
        raise VerilensError(
            f"{what} has weights on the meta device with nothing to load them: {', '.join(stranded[:5])}{more}. "
            "Give every module a real device in the device_map ('cpu', 'disk' with offload_folder=DIR, "
            "or a GPU index that exists), or use device_map='auto'")


def refuse_move(hf_model) -> None:
    """`.to(...)` of a model accelerate dispatched would break its hooks (transformers
    dispatches only a model that spans devices or offloads): refused."""
    if is_dispatched(hf_model):
        raise VerilensError("this model is dispatched by accelerate over several devices (a device_map); it cannot "
                            "be moved as a whole: load it again with another device_map, or with device=...")
