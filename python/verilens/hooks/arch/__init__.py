"""One adapter per model family: what HookedModel knows about an architecture.

To add a family, write `<family>.py` here with one `ARCH = Arch(...)` (see base.py for
the fields and llama.py for the reference layout), import it below, and add its tiny
random config to tests/hooks/conftest.py: the exactness tests then run on it."""
from __future__ import annotations

from ...errors import VerilensError
from . import gemma2, gemma3, llama, mistral, qwen2, qwen3
from .base import Arch

FAMILIES: tuple[Arch, ...] = (qwen2.ARCH, qwen3.ARCH, llama.ARCH, mistral.ARCH, gemma2.ARCH, gemma3.ARCH)
BY_MODEL_TYPE = {t: a for a in FAMILIES for t in a.model_types}
SUPPORTED_MODEL_TYPES = tuple(BY_MODEL_TYPE)


def supported() -> str:
    return ", ".join(f"{a.family} ({'/'.join(a.model_types)})" for a in FAMILIES)


def arch_for(model_type: str | None) -> Arch:
    """The adapter for a config's model_type, or a VerilensError naming the supported ones."""
    if model_type not in BY_MODEL_TYPE:
        raise VerilensError(
            f"model_type {model_type!r} is not supported; verilens analyses decoder-only LMs with a GLU MLP "
            f"in these families: {supported()}. To add a family, write one small adapter file in "
            f"python/verilens/hooks/arch/ (see llama.py)")
    return BY_MODEL_TYPE[model_type]


__all__ = ["Arch", "FAMILIES", "SUPPORTED_MODEL_TYPES", "arch_for", "supported"]
