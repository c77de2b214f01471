"""Gemma3 (text): Gemma2's layout plus q/k norms before RoPE; local (sliding) layers use
their own RoPE base, which the decoder layer already passes to attention."""
from .base import Arch

ARCH = Arch(family="Gemma3", model_types=("gemma3_text",), norm_offset=1.0, act_key="hidden_activation",
            ln2="pre_feedforward_layernorm",
            attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm",
            q_norm="self_attn.q_norm", k_norm="self_attn.k_norm", sliding="layer_types",
            attn_softcap_key="attn_logit_softcapping", final_softcap_key="final_logit_softcapping")
