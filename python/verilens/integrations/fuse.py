"""`verilens.fuse(hf_model)`: verilens' fused modules swapped into a Hugging Face model in
place, Liger-Kernel style, so a tool that hooks the model's own modules (nnsight,
TransformerLens' bridge, plain PyTorch hooks) runs head and neuron masks through the
registered ops (`verilens.ops.head_masked_o_proj`, `masked_glu`: Triton on CUDA).

In place means the module objects stay: each o_proj Linear and each GLU MLP changes its
class to a fused subclass (same parameters, same names in the state dict, same hooks), and
`unfuse` changes it back. Masks are tensors set per layer:

    fused = verilens.fuse(hf_model)
    fused.set_head_scale(17, torch.tensor([1., 0., ...]))   # 0 ablates a head, 1 keeps it
    fused.set_neuron_scale(20, scale)                        # per GLU neuron
    ...
    fused.unfuse()                                           # the original classes again

With no scale set (or a scale of ones) a fused module computes exactly what the original
does; the scales act at every position of every pass."""
from __future__ import annotations

import types

import torch
from torch import nn

from ..errors import VerilensError
from ..hooks.arch import arch_for
from ..hooks.placement import execution_device

_FUSED_CLASSES: dict = {}


class _FusedOProj:
    """o_proj through ops.head_masked_o_proj with `verilens_head_scale` (None: plain)."""

    def forward(self, x):
        from ..ops import head_masked_o_proj

        scale = self.verilens_head_scale
        if scale is None:
            return super().forward(x)
        out, _ = head_masked_o_proj(x, self.weight, self.bias, n_heads=self.verilens_n_heads, scale=scale)
        return out


class _FusedGLU:
    """down(SiLU(gate(x)) * up(x)) through ops.masked_glu with `verilens_neuron_scale`; the
    gate/up/down modules still run as modules, so their hooks fire."""

    def forward(self, x):
        from ..ops import masked_glu

        scale = self.verilens_neuron_scale
        if scale is None:
            return super().forward(x)
        parts = self.verilens_parts
        gate, up, down = (getattr(self, p) for p in parts)
        act, _ = masked_glu(gate(x), up(x), scale=scale)
        return down(act)


def _fused_class(mixin, cls):
    key = (mixin, cls)
    if key not in _FUSED_CLASSES:
        _FUSED_CLASSES[key] = type(f"Fused{cls.__name__}", (mixin, cls), {"verilens_original_class": cls})
    return _FUSED_CLASSES[key]


def _swap_class(module, cls) -> None:
    """module.__class__ = cls. On a model dispatched by accelerate (a device_map) the
    module's forward is accelerate's wrapper around `_old_forward`, a method bound to the
    old class: it is rebound too (and restored by `_restore_class`), so the fused forward
    runs inside accelerate's, on the real (onloaded) weights."""
    module.__class__ = cls
    if "_old_forward" in module.__dict__ and getattr(module, "_hf_hook", None) is not None:
        module.verilens_old_forward = module.__dict__["_old_forward"]
        module._old_forward = types.MethodType(cls.forward, module)


def _restore_class(module) -> None:
    module.__class__ = module.verilens_original_class
    old = module.__dict__.pop("verilens_old_forward", None)
    if old is not None:
        module._old_forward = old


class Fused:
    """The handle `fuse` returns: per-layer masks, and `unfuse`."""

    def __init__(self, hf_model):
        config = getattr(hf_model, "config", None)
        self.arch = arch_for(getattr(config, "model_type", None))
        self.model = hf_model
        self.layers = self.arch.top(hf_model, "layers")
        self.n_heads = config.num_attention_heads
        self.glu = self.arch.has_glu(self.layers[0]) and self.arch.act_fn(config) == "silu"
        self.o_projs, self.mlps = [], []
        for block in self.layers:
            o = self.arch.part(block, "o")
            if getattr(o, "verilens_original_class", None) is not None:
                raise VerilensError("this model is fused already: use the handle fuse() returned (or unfuse() it)")
            _swap_class(o, _fused_class(_FusedOProj, type(o)))
            o.verilens_n_heads, o.verilens_head_scale = self.n_heads, None
            self.o_projs.append(o)
            if self.glu:
                mlp = self.arch.part(block, "mlp")
                _swap_class(mlp, _fused_class(_FusedGLU, type(mlp)))
                mlp.verilens_parts = tuple(getattr(self.arch, p)[len(self.arch.mlp) + 1:] for p in ("gate", "up", "down"))
                mlp.verilens_neuron_scale = None
                self.mlps.append(mlp)

    def _layer(self, layer):
        if not 0 <= layer < len(self.layers):
            raise VerilensError(f"layer {layer} out of range (0..{len(self.layers) - 1})")
        return layer

    def _scale(self, scale, n, what, module):
        if scale is None:
            return None
        # on the device the module computes on (its weight is on meta where a device_map offloaded it)
        scale = torch.as_tensor(scale, dtype=module.weight.dtype, device=execution_device(module))
        if scale.shape != (n,):
            raise VerilensError(f"{what} scale must have shape ({n},), got {tuple(scale.shape)}")
        if not torch.isfinite(scale).all():
            raise VerilensError(f"{what} scale holds NaN or inf")
        return scale

    def set_head_scale(self, layer: int, scale) -> None:
        """Per-head factors of layer `layer`'s attention output ([n_heads]; 0 ablates a head,
        None removes the mask)."""
        o = self.o_projs[self._layer(layer)]
        o.verilens_head_scale = self._scale(scale, self.n_heads, "head", o)

    def set_neuron_scale(self, layer: int, scale) -> None:
        """Per-neuron factors of layer `layer`'s GLU activation ([d_mlp]; 0 ablates)."""
        if not self.glu:
            raise VerilensError("neuron masks need a SiLU GLU MLP (gate/up/down); this model has none")
        mlp = self.mlps[self._layer(layer)]
        down = getattr(mlp, mlp.verilens_parts[2])
        mlp.verilens_neuron_scale = self._scale(scale, down.weight.shape[1], "neuron", down)

    def unfuse(self) -> None:
        """Every module back to its own class, without the verilens attributes."""
        for m in self.o_projs + self.mlps:
            if isinstance(m, (_FusedOProj, _FusedGLU)):
                _restore_class(m)
            for attr in ("verilens_n_heads", "verilens_head_scale", "verilens_parts", "verilens_neuron_scale"):
                m.__dict__.pop(attr, None)
        self.o_projs, self.mlps = [], []


def fuse(hf_model: nn.Module) -> Fused:
    """Swap verilens' fused o_proj and GLU modules into `hf_model` in place (a Hugging Face
    causal LM of a supported family); returns the handle that sets masks and unfuses."""
    if not isinstance(hf_model, nn.Module) or not hasattr(hf_model, "config"):
        raise VerilensError(f"fuse takes a Hugging Face causal LM (an nn.Module with a config), got "
                            f"{type(hf_model).__name__}; for a HookedModel use model.hf_model")
    return Fused(hf_model)

