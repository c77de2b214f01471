"""What HookedModel needs to know about a model family, as data.

An `Arch` names where each part lives in the Hugging Face module tree (attribute paths,
from the causal-LM module for the top-level parts, from a decoder layer for the rest),
how the norms scale (Gemma's RMSNorm multiplies by 1 + weight), which config fields hold
the activation, the sliding window and the soft-caps, and which modules' outputs are the
residual-stream writes (Gemma adds the attention output and the MLP output through
post-norms). The hook runtime, the weight views and the attention pattern read only this.

Shared by every family (so not a field): q/k/v/o are Linears whose weight rows are
[head, d_head]; K/V have `num_key_value_heads` heads (GQA: query head h reads KV head
h // (n_heads / n_kv_heads)); RoPE rotates by halves (`rotate_half`) with the (cos, sin)
the decoder layer passes to attention as `position_embeddings`; the KV cache is a
`DynamicCache` whose layer l holds keys [batch, kv_head, position, d_head], already rotated.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

import torch


@dataclass(frozen=True)
class Arch:
    family: str  # shown in errors and reprs
    model_types: tuple[str, ...]  # config.model_type values this adapter reads
    # top level (from the causal-LM module)
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"  # its output is hook_embed: what enters the residual stream
    final_norm: str = "model.norm"
    # per decoder layer
    ln1: str = "input_layernorm"  # the norm before attention
    ln2: str = "post_attention_layernorm"  # the norm before the MLP
    attn: str = "self_attn"
    q: str = "self_attn.q_proj"
    k: str = "self_attn.k_proj"
    v: str = "self_attn.v_proj"
    o: str = "self_attn.o_proj"
    q_norm: str | None = None  # per-head norms of q / k before RoPE (Qwen3, Gemma3)
    k_norm: str | None = None
    mlp: str = "mlp"
    gate: str = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    down: str = "mlp.down_proj"
    attn_out: str | None = None  # the module whose output the layer adds to the residual (None: `attn`)
    mlp_out: str | None = None  # the same for the MLP (None: `mlp`)
    # numerics
    norm_offset: float = 0.0  # RMSNorm(x) = (norm_offset + weight) * x / rms(x)
    act_key: str = "hidden_act"  # config field naming the GLU's activation
    sliding: str = "none"  # "none" | "all" (config.sliding_window on every layer) | "layer_types"
    attn_softcap_key: str | None = None  # config field: scores = cap * tanh(scores / cap)
    final_softcap_key: str | None = None  # config field: logits = cap * tanh(logits / cap)

    # -- modules ------------------------------------------------------------------------
    def top(self, hf_model, part: str):
        return attrgetter(getattr(self, part))(hf_model)

    def part(self, block, part: str):
        """The module `part` of a decoder layer (None where the family has none)."""
        path = getattr(self, part)
        if path is None and part in ("attn_out", "mlp_out"):
            path = self.attn if part == "attn_out" else self.mlp
        return None if path is None else attrgetter(path)(block)

    def has_glu(self, block) -> bool:
        try:
            return all(self.part(block, p) is not None for p in ("gate", "up", "down"))
        except AttributeError:
            return False

    # -- numerics -----------------------------------------------------------------------
    def norm_gain(self, norm) -> torch.Tensor:
        """The RMSNorm's elementwise scale."""
        return norm.weight + self.norm_offset if self.norm_offset else norm.weight

    @staticmethod
    def norm_eps(norm) -> float:
        return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))

    def rms_norm(self, norm, x: torch.Tensor, on_scale, on_normalized) -> torch.Tensor:
        """The family's RMSNorm forward, bit for bit, with TransformerLens' two hook points:
        `on_scale(sqrt(mean(x^2) + eps))` [..., 1] and `on_normalized(x / scale)` (before
        the weight, in x's dtype). Each returns its argument to keep it, or a replacement;
        when both keep theirs the output is the module's own to the last bit (Llama casts to
        the input dtype before the weight, Gemma after it)."""
        dtype, h = x.dtype, x.float()
        variance = h.pow(2).mean(-1, keepdim=True)
        eps = self.norm_eps(norm)
        normed = h * torch.rsqrt(variance + eps)  # the module's own expression
        if on_scale is not None:
            scale = torch.sqrt(variance + eps).to(dtype)
            new_scale = on_scale(scale)
            if new_scale is not scale:
                normed = h / new_scale.float()
        if on_normalized is not None:
            view = normed.to(dtype)
            new = on_normalized(view)
            if new is not view:
                normed = new.float()
        if self.norm_offset:  # Gemma: (x * (offset + w)) in float32, then the cast
            return (normed * (self.norm_offset + norm.weight.float())).to(dtype)
        return norm.weight * normed.to(dtype)

    def act_fn(self, config) -> str:
        return getattr(config, self.act_key, None) or "silu"

    def sliding_window(self, config, layer: int) -> int | None:
        """Keys a query of layer `layer` sees: those less than this many positions back."""
        window = getattr(config, "sliding_window", None)
        if self.sliding == "none" or window is None:
            return None
        if self.sliding == "layer_types":
            types = getattr(config, "layer_types", None)
            return window if types is not None and types[layer] == "sliding_attention" else None
        return window

    def attn_softcap(self, config) -> float | None:
        return getattr(config, self.attn_softcap_key, None) if self.attn_softcap_key else None

    def final_softcap(self, config) -> float | None:
        return getattr(config, self.final_softcap_key, None) if self.final_softcap_key else None

    # -- the KV cache and RoPE ------------------------------------------------------------
    @staticmethod
    def new_cache():
        """An empty KV cache for verilens' own decoding loop: full keys and values at every
        layer, also on sliding-window layers (the model's mask applies the window), so it
        can be cropped, copied and read back for attention patterns."""
        from transformers import DynamicCache

        return DynamicCache()

    @staticmethod
    def past_keys(cache, layer: int) -> torch.Tensor:
        """[batch, kv_head, position, d_head]: the rotated keys layer `layer` has cached."""
        return cache.layers[layer].keys

    @staticmethod
    def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [batch, head, pos, d_head] rotated by cos / sin [batch, pos, d_head]."""
        h = x.shape[-1] // 2
        rotated = torch.cat((-x[..., h:], x[..., :h]), dim=-1)
        return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)
