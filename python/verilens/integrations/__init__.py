"""verilens inside other tools: `wrap` (a HookedModel over a Hugging Face model, a
TransformerLens TransformerBridge or an nnsight LanguageModel, on the same weights) and
`fuse` (verilens' fused o_proj / GLU modules swapped into a Hugging Face model in place)."""
from .fuse import Fused, fuse
from .wrap import wrap

__all__ = ["Fused", "fuse", "wrap"]
