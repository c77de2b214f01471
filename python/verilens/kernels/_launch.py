"""Launch plumbing shared by the ops in this package: how Triton runs here (the CPU
interpreter or a GPU), the argument checks every op makes before it launches, and the
one place a launcher picks between a fixed tile config and autotuning.

Nothing here reads a tensor's values on the host when the tensor lives on a GPU: the
ops' CUDA paths must not synchronise (CUDA graphs, torch.compile), so value checks
(finite scales, positions in range) run only on host tensors; on the GPU the kernels
clamp indices into range instead, which keeps every memory access in bounds."""
from __future__ import annotations

import importlib.util
import os

import torch

from verilens.errors import VerilensError

BACKENDS = ("auto", "torch", "triton")


def interpreting() -> bool:
    """Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1: the tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("0", "", "false", "False")


def triton_available() -> bool:
    """Whether Triton can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def fp32_dot_precision(interp: bool) -> str:
    """`tl.dot`'s input_precision for fp32 operands: as torch's own fp32 matmuls, full
    precision unless torch allows TF32 (the interpreter has no TF32)."""
    return "tf32" if (not interp and torch.backends.cuda.matmul.allow_tf32) else "ieee"


def next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def check_backend(op: str, backend: str) -> None:
    if backend not in BACKENDS:
        raise VerilensError(f"{op}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "triton" and not triton_available():
        raise VerilensError(f"{op}: backend='triton' needs Triton (pip install 'verilens[triton]')")


def require_kernel_device(op: str, x: torch.Tensor) -> None:
    """The Triton kernels run on CUDA tensors, or on CPU tensors in the interpreter."""
    if not x.is_cuda and not interpreting():
        raise VerilensError(f"{op}: the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 for tests); "
                            f"got {x.device} tensors")


def host_values(x) -> bool:
    """Whether checking x's values costs no device sync and breaks no compiled graph."""
    if torch.compiler.is_compiling():
        return False
    return not isinstance(x, torch.Tensor) or x.device.type == "cpu"


def as_tensor_arg(op: str, name: str, x, dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A scale/fill/mask/index argument as a tensor on `dev`. Host values (numbers, lists)
    are converted; a tensor must already be on `dev` (a host-to-device copy would be a
    hidden sync: move it once, outside the hot loop)."""
    if isinstance(x, torch.Tensor):
        if x.device != dev:
            raise VerilensError(f"{op}: {name} is on {x.device} but the inputs are on {dev}; "
                                f"move it with .to({str(dev)!r})")
        if x.dtype == torch.bool and dtype != torch.bool:
            raise VerilensError(f"{op}: {name} must be numbers, got a bool tensor")
        return x if x.dtype == dtype else x.to(dtype)
    if dev.type != "cpu":
        raise VerilensError(f"{op}: {name} must be a tensor on {dev} (got {type(x).__name__})")
    try:
        return torch.as_tensor(x, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as e:
        raise VerilensError(f"{op}: {name} must be numbers, got {type(x).__name__}") from e


def index_arg(op: str, name: str, x, dev: torch.device) -> torch.Tensor:
    """Integer indices (positions, neurons) as a long tensor on `dev`."""
    if isinstance(x, torch.Tensor):
        if x.device != dev:
            raise VerilensError(f"{op}: {name} is on {x.device} but the inputs are on {dev}; "
                                f"move it with .to({str(dev)!r})")
        t = x
    elif dev.type != "cpu":
        raise VerilensError(f"{op}: {name} must be a tensor on {dev} (got {type(x).__name__})")
    else:
        try:
            t = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise VerilensError(f"{op}: {name} must be integer indices, got {type(x).__name__}") from e
        if t.numel() == 0:  # [] is float to torch
            t = t.long()
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise VerilensError(f"{op}: {name} must be integer indices, got {t.dtype}")
    return t.long()


def where_arg(op: str, where, scale, dev: torch.device, B: int, P: int) -> torch.Tensor:
    """The [batch, pos] bool mask of the positions an edit applies to (a [pos] mask for a
    batch of one is taken as [1, pos])."""
    if scale is None:
        raise VerilensError(f"{op}: `where` needs a scale")
    w = as_tensor_arg(op, "where", where, dev, torch.bool)
    if w.dim() == 1 and B == 1:
        w = w[None]
    if tuple(w.shape) != (B, P):
        raise VerilensError(f"{op}: where must be [batch, pos] = [{B}, {P}], got {list(w.shape)}")
    return w


def positions_arg(op: str, name: str, x, dev: torch.device, B: int, P: int) -> torch.Tensor:
    """A [batch, k] tensor of positions in range (a [k] one for a batch of one is [1, k])."""
    pos = index_arg(op, name, x, dev)
    if pos.dim() == 1 and B == 1:
        pos = pos[None]
    if pos.dim() != 2 or pos.shape[0] != B:
        raise VerilensError(f"{op}: {name} must be an integer [batch, k] tensor with batch = {B}, "
                            f"got {list(pos.shape)}")
    check_index_range(op, name, pos, P)
    return pos


def check_finite(op: str, name: str, t: torch.Tensor) -> None:
    if host_values(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise VerilensError(f"{op}: {name} contains NaN or inf")


def check_index_range(op: str, name: str, t: torch.Tensor, n: int) -> None:
    if host_values(t) and t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        raise VerilensError(f"{op}: {name} must lie in 0..{n - 1}, got {int(t.min())}..{int(t.max())}")


def run(build, grid, args, kw, config, interp_config) -> None:
    """Launch a kernel built by `build(autotune: bool)`: with `config` (a dict of tile
    sizes, optionally num_warps / num_stages) as given; in the interpreter, or without a
    GPU driver, with `interp_config`; otherwise autotuned (which needs the driver)."""
    interp = interpreting()
    if config is None and (interp or not torch.cuda.is_available()):
        config = interp_config
    if config is None:
        build(True)[grid](*args, **kw)
        return
    cfg = dict(config)
    extra = {k: cfg.pop(k) for k in ("num_warps", "num_stages") if k in cfg}
    build(False)[grid(cfg) if callable(grid) else grid](*args, **kw, **cfg, **({} if interp else extra))
