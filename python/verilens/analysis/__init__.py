"""The self-verification analysis (PAPER.md sections 3-6): probes, GLU selection, logit
lens, previous-token heads, channel scores."""
from .channel import channel_scores, composition_matrix, ov_diagonals
from .glu import select_variant_a, select_variant_b, upper_half, value_vector_cosines
from .heads import select_heads, target_attention_density
from .lens import script_of, top_tokens
from .probes import load_probe, save_probe, train_probes

__all__ = ["channel_scores", "composition_matrix", "load_probe", "ov_diagonals", "save_probe", "script_of",
           "select_heads", "select_variant_a", "select_variant_b", "target_attention_density", "top_tokens",
           "train_probes", "upper_half", "value_vector_cosines"]
