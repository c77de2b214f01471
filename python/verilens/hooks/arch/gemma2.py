"""Gemma2: RMSNorms scale by 1 + weight; the attention and MLP outputs pass through
post-norms before the residual adds them (so hook_attn_out / hook_mlp_out are those
norms' outputs); the embedding module multiplies by sqrt(d_model); attention scores and
final logits are soft-capped; every other layer attends within a sliding window; GeLU-tanh
GLU."""
from .base import Arch

ARCH = Arch(family="Gemma2", model_types=("gemma2",), norm_offset=1.0, act_key="hidden_activation",
            ln2="pre_feedforward_layernorm",
            attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm",
            sliding="layer_types", attn_softcap_key="attn_logit_softcapping",
            final_softcap_key="final_logit_softcapping")
