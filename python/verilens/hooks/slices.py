"""TransformerLens' Slice: how `pos_slice` and `batch_slice` arguments select along an axis."""
from __future__ import annotations

import torch

from ..errors import VerilensError


class Slice:
    """None: everything; an int: that index (the axis is dropped); a tuple (k,), (k, m),
    (k, m, n) or a slice: `slice(*tuple)`; a list / tensor / array of indices: those
    positions. A TransformerLens Slice is read through its `.slice`."""

    def __init__(self, input_slice=None):
        if isinstance(input_slice, Slice):
            input_slice = input_slice.slice
        elif type(input_slice).__name__ == "Slice" and hasattr(input_slice, "slice"):  # TransformerLens' own
            input_slice = input_slice.slice
        if isinstance(input_slice, torch.Tensor) and input_slice.dim() == 0:
            input_slice = int(input_slice)
        if hasattr(input_slice, "__index__") and not isinstance(input_slice, (bool, torch.Tensor)):
            self.slice, self.mode = int(input_slice.__index__()), "int"
        elif isinstance(input_slice, tuple):
            self.slice, self.mode = slice(*input_slice), "slice"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        elif isinstance(input_slice, (list, torch.Tensor)) or type(input_slice).__name__ == "ndarray":
            self.slice, self.mode = torch.as_tensor(input_slice, dtype=torch.long), "array"
        else:
            raise VerilensError(f"a slice is None, an int, a tuple, a slice or a list of indices; got {input_slice!r}")

    def apply(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        index = [slice(None)] * tensor.dim()
        index[dim] = self.slice.to(tensor.device) if self.mode == "array" else self.slice
        return tensor[tuple(index)]
