"""Qwen3: Qwen2 plus RMSNorms over each head's q and k before RoPE."""
from .base import Arch

ARCH = Arch(family="Qwen3", model_types=("qwen3",), sliding="layer_types",
            q_norm="self_attn.q_norm", k_norm="self_attn.k_norm")
