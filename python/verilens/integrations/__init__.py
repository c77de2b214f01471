"""verilens inside other tools: `wrap` (a HookedModel over a Hugging Face model, a
TransformerLens TransformerBridge or an nnsight LanguageModel, on the same weights)."""
from .wrap import wrap

__all__ = ["wrap"]
