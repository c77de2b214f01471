"""The self-verification analysis (PAPER.md sections 2-6): traces and verdict sites,
probes, GLU selection, logit lens, previous-token heads, channel scores, interventions
with the paper's protocol, direct logit attribution of the verdict, probe transfer, and `analyze`, which runs them all into a report."""
from .attribution import verdict_attribution
from .channel import channel_scores, composition_matrix, composition_scores, ov_diagonals, paper_scores
from .glu import select_variant_a, select_variant_b, upper_half, value_vector_cosines
from .heads import select_heads, target_attention_density
from .lens import script_of, top_tokens
from .outcomes import classify, classify_authors, run_condition, run_conditions
from .pipeline import Settings, analyze
from .probes import load_probe, save_probe, train_probes
from .transfer import layer_map, transfer_probe

__all__ = ["Settings", "analyze", "channel_scores", "classify", "classify_authors", "composition_matrix", "composition_scores",
           "layer_map", "load_probe", "ov_diagonals", "paper_scores", "run_condition", "run_conditions", "save_probe", "script_of",
           "select_heads", "select_variant_a", "select_variant_b", "target_attention_density", "top_tokens",
           "train_probes", "transfer_probe", "upper_half", "value_vector_cosines", "verdict_attribution"]
