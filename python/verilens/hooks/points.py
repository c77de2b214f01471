"""Hook points: where hook functions stay attached between passes, with TransformerLens'
HookPoint surface (`name`, `fwd_hooks`, `bwd_hooks`, `ctx`, `layer()`, `add_hook`,
`remove_hooks`, `clear_context`).

Unlike TransformerLens' HookPoint these are not modules inside the forward pass: a
HookedModel keeps one per name in `model.hook_dict`, and for each pass the runtime
(verilens.hooks.runtime) installs PyTorch hooks on the native Hugging Face modules only
for the points that hold a function. A pass with no hooks is Hugging Face's own forward."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import VerilensError

DIRECTIONS = ("fwd", "bwd", "both")


@dataclass
class LensHandle:
    """One attached hook function: TransformerLens' LensHandle fields."""

    fn: Callable
    is_permanent: bool = False
    context_level: int | None = None

    @property
    def hook(self):  # TransformerLens stores the torch handle here; ours is the function
        return self.fn


class HookPoint:
    """The persistent state of one hook point of a HookedModel."""

    def __init__(self, name: str, layer: int | None):
        self.name, self._layer = name, layer
        self.fwd_hooks: list[LensHandle] = []
        self.bwd_hooks: list[LensHandle] = []
        self.ctx: dict = {}  # kept across passes for the hook functions' own use, as in TransformerLens

    def layer(self) -> int:
        if self._layer is None:
            raise VerilensError(f"{self.name} is not in a layer")
        return self._layer

    def add_hook(self, hook: Callable, dir: str = "fwd", is_permanent: bool = False, level: int | None = None,
                 prepend: bool = False) -> None:
        if dir not in ("fwd", "bwd"):
            raise VerilensError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        if not callable(hook):
            raise VerilensError(f"hook for {self.name} is not callable: {hook!r}")
        handles = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
        handle = LensHandle(hook, is_permanent, level)
        handles.insert(0, handle) if prepend else handles.append(handle)

    def add_perma_hook(self, hook: Callable, dir: str = "fwd") -> None:
        self.add_hook(hook, dir=dir, is_permanent=True)

    def has_hooks(self, dir: str = "both", including_permanent: bool = True, level: int | None = None) -> bool:
        return any(self._matching(h, including_permanent, level) for hs in self._lists(dir) for h in hs)

    def remove_hooks(self, dir: str = "fwd", including_permanent: bool = False, level: int | None = None) -> None:
        for handles in self._lists(dir):
            handles[:] = [h for h in handles if not self._matching(h, including_permanent, level)]

    def clear_context(self) -> None:
        self.ctx = {}

    def _lists(self, dir):
        if dir not in DIRECTIONS:
            raise VerilensError(f"direction must be one of {', '.join(DIRECTIONS)}, got {dir!r}")
        return [self.fwd_hooks] * (dir in ("fwd", "both")) + [self.bwd_hooks] * (dir in ("bwd", "both"))

    @staticmethod
    def _matching(h: LensHandle, including_permanent: bool, level: int | None) -> bool:
        return (including_permanent or not h.is_permanent) and (level is None or h.context_level == level)

    def __repr__(self):
        return f"HookPoint({self.name!r}, fwd={len(self.fwd_hooks)}, bwd={len(self.bwd_hooks)})"
